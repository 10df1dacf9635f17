// GeneratePatch: suffix-array matching, per-segment method choice, patch assembly.
#define ZSTD_STATIC_LINKING_ONLY
#include <lzma.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>

#include "common/byte_writer.h"
#include "common/hash.h"
#include "delta/branch_filter.h"
#include "delta/deflate_streams.h"
#include "delta/delta_gen.h"
#include "delta/elf.h"
#include "delta/lzma_replay.h"
#include "delta/matcher.h"
#include "delta/patch_format.h"
#include "delta/suffix_array.h"
#include "delta/xz_streams.h"

namespace ds::delta {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Runs fn(worker, index) for index in [0, count) on |threads| threads.
void ParallelFor(int threads, size_t count, const std::function<void(int, size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto work = [&](int worker) {
    for (size_t i = next++; i < count; i = next++) fn(worker, i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads && static_cast<size_t>(t) < count; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

int CeilLog2(uint64_t v) {
  int l = 0;
  while ((1ull << l) < v && l < 63) ++l;
  return l;
}

// One zstd compressor per worker, reused across tasks (its tables are large).
class Compressor {
 public:
  Compressor() : cctx_(ZSTD_createCCtx()) {}
  ~Compressor() { ZSTD_freeCCtx(cctx_); }
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  // A magicless frame without checksum, size or dictionary id (the patch records those itself).
  // With |max_out|, zstd stops at the first block that would pass it and |*over| is set (the
  // frame, when it fits, is the one an unbounded call makes: zstd codes the blocks straight into
  // the caller's buffer either way).
  Result<Bytes> Compress(ByteView src, int level, ByteView prefix = {},
                         uint64_t max_out = UINT64_MAX, bool* over = nullptr) {
    ZSTD_CCtx_reset(cctx_, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_format, ZSTD_f_zstd1_magicless);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_contentSizeFlag, 0);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_checksumFlag, 0);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_dictIDFlag, 0);
    if (!prefix.empty()) {
      const int wlog = std::clamp(CeilLog2(prefix.size() + src.size()), ZSTD_WINDOWLOG_MIN,
                                  ZSTD_WINDOWLOG_MAX_64);
      ZSTD_CCtx_setParameter(cctx_, ZSTD_c_windowLog, wlog);
      ZSTD_CCtx_setParameter(cctx_, ZSTD_c_enableLongDistanceMatching, 1);
      const size_t rc = ZSTD_CCtx_refPrefix(cctx_, prefix.data(), prefix.size());
      if (ZSTD_isError(rc)) return Error(ErrorCode::kInternal, ZSTD_getErrorName(rc));
    }
    Bytes out(std::min<uint64_t>(ZSTD_compressBound(src.size()), max_out));
    const size_t n = ZSTD_compress2(cctx_, out.data(), out.size(), src.data(), src.size());
    if (over && ZSTD_isError(n) && ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) {
      *over = true;
      return Bytes();
    }
    if (ZSTD_isError(n)) {
      return Error(ErrorCode::kInternal, std::string("zstd: ") + ZSTD_getErrorName(n));
    }
    out.resize(n);
    return out;
  }

 private:
  ZSTD_CCtx* cctx_;
};

// A suffix array built once (on a thread of its own) for several parts of the generator.
using SharedSuffixArray = std::shared_future<Result<SuffixArray>>;

// The suffix array of |text|, sorted by the first get() on the thread calling it.
SharedSuffixArray SortWhenNeeded(ByteView text) {
  return std::async(std::launch::deferred, [text] { return SuffixArray::Build(text); }).share();
}

// Both files' SHA-256 (the patch header's), computed once for the patches made of the same pair.
struct FileHashes {
  Sha256Digest old_sha256{}, new_sha256{};
};
using SharedHashes = std::shared_future<FileHashes>;

// The hashes, computed by the first get() on the thread calling it.
SharedHashes HashWhenNeeded(ByteView old, ByteView neu) {
  return std::async(std::launch::deferred,
                    [old, neu] {
                      return FileHashes{Sha256::Of(old), Sha256::Of(neu)};
                    })
      .share();
}

// A value set once (later calls are ignored) and read by blocking until it is set.
template <typename T>
class SetOnce {
 public:
  void Set(T value) {
    std::lock_guard<std::mutex> lock(mu_);
    if (set_) return;
    set_ = true;
    value_ = value;
    cv_.notify_all();
  }
  T Get() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return set_; });
    return value_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
  T value_{};
};

// Between a recompression plan and the plain patch made beside it (GeneratePatch): the plain
// patch says early whether one of its whole-file candidates will wait for the plan's bound (the
// plan then leaves the second core to it rather than coding a large stream in halves), and the
// plan publishes the most it can cost as soon as it knows (UINT64_MAX: no bound).
struct PlanBound {
  SetOnce<bool> waiter;
  SetOnce<uint64_t> bound;
};

// How a stream is coded with LZMA2.
struct LzmaTuning {
  uint32_t preset = 9;
  uint32_t nice_len = 0;                // 0: the preset's.
  std::optional<lzma_match_finder> mf;  // Empty: the preset's.
  // Literal context bits, literal position bits, position bits: -1 keeps the preset's.
  int lc = -1, lp = -1, pb = -1;
  uint32_t max_dict = 0;  // 0: the stream's size (up to the preset's).
};

// LZMA2 with |tuning|. A non-empty |ref| presets the dictionary with it ("patch-from" with LZMA2,
// method kLzmaRef). With |max_out|, liblzma stops once the output fills that much and |*over| is
// set.
Result<Bytes> Lzma2Compress(ByteView src, const LzmaTuning& tuning, ByteView ref = {},
                            uint64_t max_out = UINT64_MAX, bool* over = nullptr) {
  lzma_options_lzma opt{};
  if (lzma_lzma_preset(&opt, tuning.preset)) return Error(ErrorCode::kInternal, "lzma preset");
  if (tuning.nice_len) opt.nice_len = tuning.nice_len;
  if (tuning.mf) opt.mf = *tuning.mf;
  if (tuning.lc >= 0) opt.lc = static_cast<uint32_t>(tuning.lc);
  if (tuning.lp >= 0) opt.lp = static_cast<uint32_t>(tuning.lp);
  if (tuning.pb >= 0) opt.pb = static_cast<uint32_t>(tuning.pb);
  if (ref.empty()) {
    uint64_t dict = std::min<uint64_t>(src.size(), opt.dict_size);
    if (tuning.max_dict) dict = std::min<uint64_t>(dict, tuning.max_dict);
    opt.dict_size = std::max<uint32_t>(LZMA_DICT_SIZE_MIN, static_cast<uint32_t>(dict));
  } else {
    opt.dict_size = static_cast<uint32_t>(LzmaRefDictSize(ref.size(), src.size()));
    opt.preset_dict = ref.data();
    opt.preset_dict_size = static_cast<uint32_t>(ref.size());
  }
  lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
  Bytes out(std::min<uint64_t>(src.size() + src.size() / 16 + 1024, max_out));
  size_t out_pos = 0;
  const lzma_ret rc = lzma_raw_buffer_encode(filters, nullptr, src.data(), src.size(), out.data(),
                                             &out_pos, out.size());
  if (over && rc == LZMA_BUF_ERROR) {
    *over = true;
    return Bytes();
  }
  if (rc != LZMA_OK) {
    return Error(ErrorCode::kInternal,
                 "lzma2 encoder failed (" + std::to_string(static_cast<int>(rc)) + ")");
  }
  out.resize(out_pos);
  return out;
}

// LZMA2 in two halves coded at once, each from a fresh dictionary, the first without its end
// marker: one valid LZMA2 stream (the second half's first chunk resets the dictionary), which
// any LZMA2 decoder reads as it reads the whole. On the corpus's large diff streams the halves
// cost the same bytes as the whole (their matches are local), in half the time on two cores.
Result<Bytes> Lzma2CompressHalves(ByteView src, const LzmaTuning& tuning) {
  const size_t half = src.size() / 2;
  std::future<Result<Bytes>> second =
      std::async(std::launch::async, [&] { return Lzma2Compress(src.subspan(half), tuning); });
  Result<Bytes> first = Lzma2Compress(src.subspan(0, half), tuning);
  Result<Bytes> rest = second.get();
  if (!first.ok()) return first.status();
  if (!rest.ok()) return rest.status();
  if (first->empty() || first->back() != 0x00) {
    return Error(ErrorCode::kInternal, "lzma2 stream without its end marker");
  }
  first->pop_back();
  first->insert(first->end(), rest->begin(), rest->end());
  return first;
}

// Streams at least this large are coded in halves when their segment's streams are coded at once.
constexpr size_t kLzmaHalvesMin = 1 << 20;

// The LZMA2 settings for one copydiff stream, chosen on the corpus (docs/BENCHMARKS.md):
// - nearly random streams (|dense|): a fast preset loses almost nothing and saves most of the
//   time;
// - a diff stream as it is (long zero runs broken by small differences): nice_len 273, ~14%
//   smaller than zstd --ultra -22; the binary tree on 2-byte hashes (bt2) is as small as bt4 and
//   faster;
// - a diff stream in zero-run form (no long runs left: run lengths and the differences of code
//   whose addresses moved): nice_len 64, bt2, a literal's context the top two bits of the byte
//   before and no position bits (lc=2/lp=0/pb=0): 0.7% smaller and ~25% faster than nice_len
//   273 with bt4; from 1 MiB up (large recompression segments, the largest executables'
//   segments) a dictionary of 256 KiB: their matches are near (libssl3-deb's 1.3 MB diff form and
//   biome-patch's 1.8 MB one come out a few bytes smaller), and they code ~30% faster than with a
//   dictionary of their own size (the binary tree over a smaller window is shallower); smaller
//   forms keep their own size (capped, biome-patch's 39 forms of 100-740 KB cost 8 KB more);
// - the literal stream (new bytes): nice_len 32, bt2 (as small as bt4, ~13% faster);
// - the control stream (varints, where a literal's context is one bit of the byte before):
//   lc=1/lp=0/pb=0, 1-6% smaller.
// LZMA2 chunks carry lc/lp/pb, so the decoder needs none of this.
LzmaTuning StreamTuning(int stream, size_t size, bool zero_run_form, bool dense, bool sparse) {
  LzmaTuning t;
  if (dense) {
    t.preset = 2;
    return t;
  }
  switch (stream) {
    case kControlStream:
      t.nice_len = 32;
      t.lc = 1;
      t.lp = 0;
      t.pb = 0;
      break;
    case kDiffStream:
      if (zero_run_form) {
        t.nice_len = 64;
        t.mf = LZMA_MF_BT2;
        t.lc = 2;
        t.lp = 0;
        t.pb = 0;
        if (size >= kLzmaHalvesMin) t.max_dict = 256 << 10;
      } else {
        t.nice_len = sparse ? 32 : 273;
        t.mf = LZMA_MF_BT2;
      }
      break;
    default:
      t.nice_len = 32;
      t.mf = LZMA_MF_BT2;
      break;
  }
  return t;
}

// Streams up to this size get every coder whatever the fast probe says.
constexpr size_t kSmallStream = 4096;

// Streams up to this size are also tried with zstd at the stream level (cheap at that size;
// above it LZMA2 won on every stream of the corpus).
constexpr size_t kZstdTrialLimit = 128 << 10;

// About the bytes of a segment header, for comparing encodings.
constexpr uint64_t kSegmentOverhead = 24;

struct EncodedSegment {
  SegmentHeader header;
  Bytes payload;
  uint64_t ref_length = 0;
  uint64_t copy_ops = 0;
  bool zero_run = false;  // A stream in zero-run form (DSPF 1.3).
  uint64_t encoded_size() const { return payload.size() + kSegmentOverhead; }
};

EncodedSegment Stored(ByteView neu, uint64_t begin, uint64_t end) {
  EncodedSegment s;
  s.header.method = Method::kStored;
  s.payload.assign(neu.begin() + begin, neu.begin() + end);
  return s;
}

// Streams up to this size are also tried as they are when their zero-run form is tried.
constexpr size_t kRawStreamTrialLimit = 512 << 10;

// The smallest coding of one copydiff stream (or its zero-run form) the trials find.
struct StreamCoding {
  StreamCodec codec = StreamCodec::kStored;
  Bytes bytes;      // Empty when stored (the caller keeps the source).
  size_t size = 0;  // Coded bytes.
};
// |parallel|: the segment's streams are being coded at once (one large segment): a large stream's
// LZMA2 is coded in halves. |probed|, when given, learns the most the coding can cost as soon as
// the fast probe knows it (before the slow coders run).
Result<StreamCoding> CodeStream(ByteView src, int stream, bool zero_run_form, int level,
                                Compressor* comp, bool parallel = false,
                                const std::function<void(uint64_t)>& probed = {}) {
  StreamCoding best;
  best.size = src.size();
  auto keep = [&](StreamCodec codec, Bytes&& bytes) {
    if (bytes.size() < best.size) {
      best.codec = codec;
      best.size = bytes.size();
      best.bytes = std::move(bytes);
    }
  };
  // A fast zstd pass first: a large stream it cannot shrink at all is stored, skipping the slow
  // coders (small streams are cheap to try, and there zstd's frame overhead misleads).
  Result<Bytes> probe = comp->Compress(src, 3);
  if (!probe.ok()) return probe.status();
  if (probed) probed(std::min(probe->size(), src.size()));
  if (probe->size() >= src.size() && src.size() > kSmallStream) return best;
  keep(StreamCodec::kZstd, std::move(probe).value());
  // Nearly all one value (e.g. the diff of an unchanged region): little left to gain, and long
  // runs make LZMA's longest matches slow, so only a short-match pass, if anything.
  const bool sparse = best.size * 1024 < src.size();
  if (sparse && best.size <= 64) return best;
  const bool dense = best.size * 10 > src.size() * 9 && src.size() > kSmallStream;
  const LzmaTuning tuning = StreamTuning(stream, src.size(), zero_run_form, dense, sparse);
  Result<Bytes> lz = parallel && src.size() >= kLzmaHalvesMin ? Lzma2CompressHalves(src, tuning)
                                                              : Lzma2Compress(src, tuning);
  if (!lz.ok()) return lz.status();
  keep(StreamCodec::kLzma2, std::move(lz).value());
  if (src.size() <= kZstdTrialLimit && !dense) {
    Result<Bytes> z = comp->Compress(src, level);
    if (!z.ok()) return z.status();
    keep(StreamCodec::kZstd, std::move(z).value());
  }
  return best;
}

// |parallel_streams|: the three streams are coded at once (one large segment), and with |halves|
// a large stream's LZMA2 in halves too. |on_bound|, when given, is called once (from any of the
// coding threads) with the most the payload can cost, as soon as every stream's fast probe has run.
Result<EncodedSegment> EncodeCopyDiff(ByteView old, ByteView neu, uint64_t begin,
                                      const std::vector<CopyOp>& ops, int level, Compressor* comp,
                                      bool parallel_streams = false, bool halves = false,
                                      const std::function<void(uint64_t)>& on_bound = {}) {
  Bytes streams[3];
  ByteWriter ctrl(&streams[kControlStream]);
  Bytes& diff = streams[kDiffStream];
  Bytes& lit = streams[kLiteralStream];
  uint64_t new_pos = begin;
  CopyAnchor last, before_last;
  for (const CopyOp& op : ops) {
    uint64_t where = 0;
    if (op.copy_len) {
      const uint64_t out_pos = new_pos - begin;
      const int64_t old_pos = static_cast<int64_t>(op.old_pos);
      const uint64_t w0 =
          EncodeCopyWhere(old_pos - ResolveCopyBase(0, last, before_last, out_pos), false);
      const uint64_t w1 =
          EncodeCopyWhere(old_pos - ResolveCopyBase(1, last, before_last, out_pos), true);
      where = w1 < w0 ? w1 : w0;
    }
    ctrl.WriteVarint(where);
    ctrl.WriteVarint(op.copy_len);
    ctrl.WriteVarint(op.lit_len);
    if (op.copy_len) {
      const size_t d0 = diff.size();
      diff.resize(d0 + op.copy_len);
      const uint8_t* o = old.data() + op.old_pos;
      const uint8_t* w = neu.data() + new_pos;
      for (uint64_t i = 0; i < op.copy_len; ++i) diff[d0 + i] = static_cast<uint8_t>(w[i] - o[i]);
      new_pos += op.copy_len;
      before_last = last;
      last = CopyAnchor{static_cast<int64_t>(op.old_pos + op.copy_len), new_pos - begin};
    }
    lit.insert(lit.end(), neu.begin() + new_pos, neu.begin() + new_pos + op.lit_len);
    new_pos += op.lit_len;
  }
  Bytes encoded[3], forms[3];
  CopyDiffLayout layout;
  // The payload's bound: each stream's probe (or its size), plus its lengths and codec.
  std::mutex bound_mu;
  int bounds_pending = 3;
  uint64_t bound = 64;
  auto stream_bound = [&](uint64_t b) {
    if (!on_bound) return;
    {
      std::lock_guard<std::mutex> lock(bound_mu);
      bound += b + 32;
      if (--bounds_pending > 0) return;
    }
    on_bound(bound);  // The last stream's thread: nothing else touches |bound| now.
  };
  // Codes stream |i| into layout/encoded (each stream touches only its own entries).
  auto code = [&](int i, Compressor* c) -> Status {
    layout.raw_len[i] = streams[i].size();
    layout.encoded[i] = streams[i];
    if (streams[i].empty()) {
      stream_bound(0);
      return Status::Ok();
    }
    // Sparse streams (mostly zeros: the diff of code that barely changed) are coded in zero-run
    // form, at a twentieth of the time and about the same size; the stream as it is is tried
    // too when it is small enough to be cheap.
    ZeroRunEncode(streams[i], &forms[i]);
    const bool try_form = forms[i].size() * 2 <= streams[i].size();
    std::optional<StreamCoding> form, raw;
    // The first coding tried bounds the stream: the raw one is kept only when it is smaller.
    if (try_form) {
      DS_ASSIGN_OR_RETURN(form, CodeStream(forms[i], i, true, level, c, halves, stream_bound));
    }
    if (!try_form || streams[i].size() <= kRawStreamTrialLimit) {
      DS_ASSIGN_OR_RETURN(raw, CodeStream(streams[i], i, false, level, c, halves,
                                          try_form ? std::function<void(uint64_t)>()
                                                   : std::function<void(uint64_t)>(stream_bound)));
    }
    if (form.has_value() &&
        (!raw.has_value() || form->size + VarintSize(forms[i].size()) < raw->size)) {
      layout.zero_run[i] = true;
      layout.form_len[i] = forms[i].size();
      layout.codec[i] = form->codec;
      if (form->codec == StreamCodec::kStored) {
        layout.encoded[i] = forms[i];
      } else {
        encoded[i] = std::move(form->bytes);
        layout.encoded[i] = encoded[i];
      }
    } else if (raw->codec != StreamCodec::kStored) {
      layout.codec[i] = raw->codec;
      encoded[i] = std::move(raw->bytes);
      layout.encoded[i] = encoded[i];
    }
    return Status::Ok();
  };
  if (parallel_streams) {
    // The diff and literal streams on threads of their own (one large segment: nothing else to
    // run beside it).
    Compressor extra[2];
    std::future<Status> diff_done =
        std::async(std::launch::async, [&] { return code(1, &extra[0]); });
    std::future<Status> lit_done =
        std::async(std::launch::async, [&] { return code(2, &extra[1]); });
    const Status ctrl_done = code(0, comp);
    const Status d = diff_done.get(), l = lit_done.get();
    DS_RETURN_IF_ERROR(ctrl_done);
    DS_RETURN_IF_ERROR(d);
    DS_RETURN_IF_ERROR(l);
  } else {
    for (int i = 0; i < 3; ++i) DS_RETURN_IF_ERROR(code(i, comp));
  }
  EncodedSegment s;
  s.header.method = Method::kCopyDiff;
  s.copy_ops = ops.size();
  s.zero_run = layout.zero_run[0] || layout.zero_run[1] || layout.zero_run[2];
  WriteCopyDiffPayload(layout, &s.payload);
  return s;
}

// |level| 0 selects LZMA2 (kLzmaRef), 1-22 a zstd level (kZstdRef). With |over|, a coding that
// would pass |max_out| bytes is given up (*over set, the segment empty).
Result<EncodedSegment> EncodeRef(ByteView old, ByteView neu, uint64_t begin, uint64_t end,
                                 uint64_t ref_offset, uint64_t ref_length, int level,
                                 Compressor* comp, uint64_t max_out = UINT64_MAX,
                                 bool* over = nullptr) {
  const ByteView src = neu.subspan(begin, end - begin);
  const ByteView ref = old.subspan(ref_offset, ref_length);
  Result<Bytes> z = level == 0
                        ? Lzma2Compress(src, LzmaTuning{.preset = 9, .nice_len = 273, .mf = {}},
                                        ref, max_out, over)
                        : comp->Compress(src, level, ref, max_out, over);
  if (!z.ok()) return z.status();
  if (over && *over) return EncodedSegment();
  EncodedSegment s;
  s.header.method = level == 0 ? Method::kLzmaRef : Method::kZstdRef;
  s.ref_length = ref_length;
  WriteZstdRefPayload(ref_offset, ref_length, *z, &s.payload);
  return s;
}

// The old window of |width| bytes that the segment's copies use most.
uint64_t ChooseRefWindow(const std::vector<CopyOp>& ops, uint64_t old_size, uint64_t width,
                         uint64_t fallback_center) {
  std::vector<std::pair<uint64_t, uint64_t>> copies;
  for (const CopyOp& op : ops) {
    if (op.copy_len) copies.emplace_back(op.old_pos, op.copy_len);
  }
  uint64_t start;
  if (copies.empty()) {
    start = fallback_center > width / 2 ? fallback_center - width / 2 : 0;
  } else {
    std::sort(copies.begin(), copies.end());
    uint64_t best = 0, sum = 0;
    start = copies[0].first;
    for (size_t lo = 0, hi = 0; lo < copies.size(); ++lo) {
      while (hi < copies.size() && copies[hi].first < copies[lo].first + width) {
        sum += copies[hi++].second;
      }
      if (sum > best) {
        best = sum;
        start = copies[lo].first;
      }
      sum -= copies[lo].second;
    }
  }
  return std::min(start, old_size - width);
}

// Estimated compressed bytes per literal byte, for pruning copies that do not pay.
constexpr double kTextLiteralCost = 1.0;
constexpr double kBinaryLiteralCost = 0.5;

// Multi-segment patches smaller than this are also tried as one copydiff segment.
constexpr uint64_t kWholeCopyDiffTrial = 64 << 10;

// Files up to this size always get the whole-file reference trials.
constexpr uint64_t kAlwaysTryRefSize = 1 << 20;
// Larger files get the LZMA2 whole-file trial when more sampled pieces than kRefTrialUnmatched
// are new, and zstd's too above kRefTrialMixed (partly compressed data); above
// kRefTrialUnrelated nearly nothing is shared (compressed or unrelated data) and zstd alone is as
// good.
constexpr double kRefTrialUnmatched = 0.70;
constexpr double kRefTrialMixed = 0.80;
constexpr double kRefTrialUnrelated = 0.90;

// True when at least 90% of a sample of |data| is printable ASCII or common whitespace.
bool LooksLikeText(ByteView data) {
  const size_t step = std::max<size_t>(1, data.size() / (1 << 20));
  size_t seen = 0, text = 0;
  for (size_t i = 0; i < data.size(); i += step) {
    const uint8_t c = data[i];
    text += (c >= 0x20 && c < 0x7f) || c == '\n' || c == '\r' || c == '\t';
    ++seen;
  }
  return text * 10 >= seen * 9;
}

// Fraction (0..1) of sampled 32-byte pieces of |neu| that do not occur in the old file: a cheap
// measure of how much changed, taken before the expensive work to decide what to try.
double UnmatchedFraction(const SuffixArray& sa, ByteView neu) {
  constexpr uint64_t kSamples = 2048, kPiece = 32;
  if (neu.size() < kPiece) return 1.0;
  const uint64_t span = neu.size() - kPiece;
  uint64_t unmatched = 0;
  for (uint64_t k = 0; k < kSamples; ++k) {
    const uint64_t at = span * k / kSamples;
    uint64_t pos;
    unmatched += sa.LongestMatch(neu.subspan(at, kPiece), &pos) < kPiece;
  }
  return static_cast<double>(unmatched) / kSamples;
}

// LZMA2 with the old file as its dictionary codes text edits and much-changed binaries best, but
// its binary-tree match finder slows down as the window grows (9 MB of old + 9 MB of new: 7 s).
// Large files are cut into one part per worker, each with the stretch of the old file its
// sampled pieces come from plus this margin on either side: about a third of the wall time, for
// ~0-3% more.
constexpr uint64_t kTextRefMargin = 256 << 10;
constexpr uint64_t kBinaryRefMargin = 512 << 10;
// Large text gets the reference parts only when this much of it is new; below, its copydiff is
// as small (the zero-run diff stream carries short edits well) at a fraction of the time.
constexpr double kTextRefUnmatched = 0.25;
// Text segments also try copies pruned as if literals cost this much: fewer, longer copies with
// more literals win where edits are dense (typescript 5.8 -> 5.9: -7%), lose where they are rare.
constexpr double kTextLiteralCostLow = 0.5;

// The old window for new[begin, end) as a reference: where sampled pieces of it occur in the old
// file, densest stretch of the part's length, plus |margin| each side.
std::pair<uint64_t, uint64_t> SampledRefWindow(const SuffixArray& sa, ByteView neu, uint64_t n,
                                               uint64_t begin, uint64_t end, uint64_t margin) {
  constexpr uint64_t kSamples = 1024, kPiece = 32;
  const uint64_t len = end - begin;
  std::vector<CopyOp> hits;
  if (len >= kPiece) {
    for (uint64_t k = 0; k < kSamples; ++k) {
      const uint64_t at = begin + (len - kPiece) * k / kSamples;
      uint64_t pos;
      if (sa.LongestMatch(neu.subspan(at, kPiece), &pos) >= kPiece) {
        hits.push_back(CopyOp{pos, kPiece, 0});
      }
    }
  }
  const uint64_t core = std::min(n, len);
  const uint64_t center = neu.empty() ? 0 : n * begin / neu.size();
  const uint64_t start = ChooseRefWindow(hits, n, core, center);
  const uint64_t lo = start > margin ? start - margin : 0;
  const uint64_t hi = std::min(n, start + core + margin);
  return {lo, hi - lo};
}

// The code regions of |old| and |neu| and the transform for them, when both are executables (ELF
// or PE) of the same machine with code in them.
struct TransformChoice {
  Transform transform = Transform::kNone;
  std::vector<CodeRegion> old_regions, new_regions;
  std::vector<AddressRun> address_map;
};
TransformChoice ChooseTransform(ByteView old, ByteView neu) {
  TransformChoice c;
  Result<ElfCode> o = ParseExecutableCode(old);
  Result<ElfCode> n = ParseExecutableCode(neu);
  if (!o.ok() || !n.ok() || o->machine != n->machine || !o->has_code() || !n->has_code()) {
    return c;
  }
  c.transform = TransformForMachine(n->machine);
  c.old_regions = std::move(o->regions);
  c.new_regions = std::move(n->regions);
  return c;
}

// Bytes the transform tables of |tc| add to the header.
uint64_t TablesSize(const TransformChoice& tc) {
  FileHeader h;
  Bytes without, with;
  WriteFileHeader(h, &without);
  h.flags = kFlagCodeRegions;
  h.old_regions = tc.old_regions;
  h.new_regions = tc.new_regions;
  h.address_map = tc.address_map;
  h.transform_saved = 1 << 20;
  WriteFileHeader(h, &with);
  return with.size() - without.size();
}

bool Intersects(const std::vector<CodeRegion>& regions, uint64_t begin, uint64_t end) {
  for (const CodeRegion& r : regions) {
    if (r.code && r.offset < end && begin < r.offset + r.length) return true;
  }
  return false;
}

// Where old code reappears in the new file, from the plain matching's copies: runs of at least
// kMinMapCopy bytes inside the old code regions, sorted, disjoint, and merged when neighbours
// moved by the same distance.
constexpr uint64_t kMinMapCopy = 16;
std::vector<AddressRun> BuildAddressMap(const std::vector<std::vector<CopyOp>>& seg_ops,
                                        uint64_t seg_size,
                                        const std::vector<CodeRegion>& old_regions) {
  std::vector<AddressRun> raw;
  for (size_t i = 0; i < seg_ops.size(); ++i) {
    uint64_t new_pos = i * seg_size;
    for (const CopyOp& op : seg_ops[i]) {
      if (op.copy_len >= kMinMapCopy) {
        const int64_t delta = static_cast<int64_t>(new_pos) - static_cast<int64_t>(op.old_pos);
        const uint64_t a = op.old_pos, b = op.old_pos + op.copy_len;
        for (const CodeRegion& r : old_regions) {
          const uint64_t lo = std::max(a, r.offset), hi = std::min(b, r.offset + r.length);
          if (lo < hi) raw.push_back({lo, hi - lo, delta});
        }
      }
      new_pos += op.copy_len + op.lit_len;
    }
  }
  std::sort(raw.begin(), raw.end(), [](const AddressRun& x, const AddressRun& y) {
    return x.old_offset != y.old_offset ? x.old_offset < y.old_offset : x.length > y.length;
  });
  std::vector<AddressRun> out;
  for (AddressRun r : raw) {
    if (!out.empty()) {
      AddressRun& p = out.back();
      const uint64_t p_end = p.old_offset + p.length;
      if (r.old_offset < p_end) {
        if (r.old_offset + r.length <= p_end) continue;
        r.length -= p_end - r.old_offset;
        r.old_offset = p_end;
      }
      if (r.delta == p.delta && r.old_offset - p_end <= 256) {
        p.length = r.old_offset + r.length - p.old_offset;
        continue;
      }
    }
    out.push_back(r);
  }
  if (out.size() > kMaxAddressRuns) {
    std::nth_element(out.begin(), out.begin() + kMaxAddressRuns, out.end(),
                     [](const AddressRun& x, const AddressRun& y) { return x.length > y.length; });
    out.resize(kMaxAddressRuns);
    std::sort(out.begin(), out.end(),
              [](const AddressRun& x, const AddressRun& y) { return x.old_offset < y.old_offset; });
  }
  return out;
}

// Adds |seg| to the per-method counts and copy operations of |st|.
void CountSegment(const EncodedSegment& seg, GenerateStats* st) {
  st->copy_ops += seg.copy_ops;
  switch (seg.header.method) {
    case Method::kStored:
      ++st->stored_segments;
      break;
    case Method::kCopyDiff:
      ++st->copydiff_segments;
      break;
    case Method::kZstdRef:
    case Method::kLzmaRef:
      ++st->ref_segments;
      break;
  }
}

struct Plan {
  std::vector<EncodedSegment> segments;
  uint64_t seg_size = 0;  // New bytes per segment (the last one may be shorter).
  uint64_t size() const {
    uint64_t s = 0;
    for (const auto& seg : segments) s += seg.encoded_size();
    return s;
  }
};

int ThreadCount(const GenerateOptions& options) {
  return options.threads > 0 ? options.threads
                             : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// The plain patch: the whole new file matched against the whole old file, through |old_sa|
// (the old file's suffix array). |plan_bound|, when given, is the most a patch made beside this
// one can cost, known later (GeneratePatch: the recompression plan): then this patch only has
// to be exact when it is smaller than that, so its whole-file reference candidates wait for the
// bound and give up as soon as they pass it — a candidate larger than the bound is larger than
// the other patch, and if it would have been this patch's smallest, this patch loses anyway.
Result<Bytes> GenerateGeneric(ByteView old, ByteView neu, const GenerateOptions& options,
                              GenerateStats& st, const SharedSuffixArray& old_sa,
                              const SharedHashes& file_hashes, PlanBound* plan_bound = nullptr) {
  // Whatever happens, the plan learns whether a candidate here waits for its bound.
  struct SayNoWaiter {
    PlanBound* b;
    ~SayNoWaiter() {
      if (b) b->waiter.Set(false);
    }
  } say_no_waiter{plan_bound};
  const auto t0 = Clock::now();
  const int threads = ThreadCount(options);
  const uint64_t n = old.size(), m = neu.size();

  FileHeader header;
  header.old_size = n;
  header.new_size = m;
  // Hash both files (or wait for their hashes) while the suffix array is built.
  auto hashes = std::async(std::launch::async, [&] {
    const FileHashes& h = file_hashes.get();
    header.old_sha256 = h.old_sha256;
    header.new_sha256 = h.new_sha256;
  });
  const auto t_sort = Clock::now();
  const Result<SuffixArray>& sa_or = old_sa.get();
  st.suffix_sort_seconds = SecondsSince(t_sort);
  hashes.wait();
  if (!sa_or.ok()) return sa_or.status();
  const SuffixArray& sa = *sa_or;

  // Segments of at most segment_size; their count is rounded up to a multiple of the thread count
  // (above 1 MiB) so that the workers finish together.
  size_t seg_count = m == 0 ? 0 : static_cast<size_t>((m - 1) / options.segment_size + 1);
  if (m > (1u << 20) && threads > 1) seg_count = (seg_count + threads - 1) / threads * threads;
  const uint64_t seg_size = seg_count == 0 ? options.segment_size : (m - 1) / seg_count + 1;
  // Rounding the size up can make fewer segments than counted; never leave an empty one.
  if (m > 0) seg_count = static_cast<size_t>((m - 1) / seg_size + 1);
  const bool small = m <= options.whole_file_limit;

  std::vector<std::unique_ptr<Compressor>> comps;
  for (int i = 0; i < threads; ++i) comps.push_back(std::make_unique<Compressor>());

  // Reference candidates (files up to whole_file_limit): LZMA2 or zstd with the old file as
  // dictionary. They win on text, where edits are many and short, and on binaries that changed a
  // lot; they are tried on files under 1 MiB (cheap), on files where many sampled pieces are not
  // found in the old file, and on text with enough new pieces. Above 1 MiB the LZMA2 candidate
  // is cut into parts (see kTextRefMargin). They run as extra tasks ahead of the segment tasks so
  // that both cores stay busy.
  const bool text = LooksLikeText(neu);
  std::vector<int> ref_levels;  // Whole-file candidates: 0 = LZMA2, else a zstd level.
  bool lzma_parts = false;
  if (options.try_zstd_ref && small && m > 0 && n > 0 && n <= options.max_ref_window) {
    st.unmatched_fraction = UnmatchedFraction(sa, neu);
    const double u = st.unmatched_fraction;
    if (m <= kAlwaysTryRefSize) {
      ref_levels = {0, options.ref_level};
    } else if (u > kRefTrialUnrelated) {
      ref_levels = {std::min(options.ref_level, 19)};
    } else if (u > kRefTrialMixed) {
      ref_levels = {std::min(options.ref_level, 19)};
      lzma_parts = true;
    } else {
      lzma_parts = u > kRefTrialUnmatched || (text && u >= kTextRefUnmatched);
    }
  }
  if (plan_bound) plan_bound->waiter.Set(!ref_levels.empty());
  struct RefPart {
    uint64_t begin = 0, end = 0, ref_offset = 0, ref_length = 0;
    std::optional<EncodedSegment> seg;
  };
  std::vector<RefPart> ref_parts;
  if (lzma_parts) {
    const size_t parts = static_cast<size_t>(std::min<uint64_t>(threads, m));
    const uint64_t part_size = (m - 1) / parts + 1;
    for (uint64_t b = 0; b < m; b += part_size) {
      RefPart part;
      part.begin = b;
      part.end = std::min(m, b + part_size);
      if (parts == 1) {
        part.ref_length = n;
      } else {
        std::tie(part.ref_offset, part.ref_length) = SampledRefWindow(
            sa, neu, n, part.begin, part.end, text ? kTextRefMargin : kBinaryRefMargin);
      }
      ref_parts.push_back(std::move(part));
    }
  }

  const double literal_cost = text ? kTextLiteralCost : kBinaryLiteralCost;

  // Every segment matched against the whole old file first, so that an executable transform can
  // filter and sort its old file (which needs the copies) while the segments are coded.
  std::vector<std::vector<CopyOp>> matched(seg_count), seg_ops(seg_count);
  const auto t_match = Clock::now();
  ParallelFor(threads, seg_count, [&](int, size_t i) {
    const uint64_t begin = i * seg_size, end = std::min(m, begin + seg_size);
    matched[i] = MatchRange(sa, neu, begin, end);
    seg_ops[i] = matched[i];
    PruneCopies(&seg_ops[i], begin, literal_cost);
  });

  // Executable transform: filter both files' code (the new file per segment, as the applier
  // will) and sort the filtered old file — on a thread of its own, beside the coding below, for
  // binaries (text keeps its copies open to a second pruning, so its transform waits for it).
  TransformChoice tc;
  if (options.try_transforms && seg_count > 0 && n > 0) tc = ChooseTransform(old, neu);
  std::vector<size_t> code_segs;
  struct Filtered {
    Bytes fold, fnew;
    Result<SuffixArray> fsa = Error(ErrorCode::kInternal, "suffix array not built");
    double seconds = 0;
  };
  auto filter = [&]() {
    const auto t_filter = Clock::now();
    auto f = std::make_unique<Filtered>();
    tc.address_map = BuildAddressMap(seg_ops, seg_size, tc.old_regions);
    const TargetMap target_map(tc.old_regions, tc.new_regions, tc.address_map);
    f->fold.assign(old.begin(), old.end());
    ApplyBranchFilter(tc.transform, tc.old_regions, 0, f->fold, true, &target_map);
    f->fnew.assign(neu.begin(), neu.end());
    for (size_t i : code_segs) {
      const uint64_t begin = i * seg_size, end = std::min(m, begin + seg_size);
      ApplyBranchFilter(tc.transform, tc.new_regions, begin,
                        std::span<uint8_t>(f->fnew.data() + begin, end - begin), true);
    }
    f->fsa = SuffixArray::Build(f->fold);
    f->seconds = SecondsSince(t_filter);
    return f;
  };
  std::future<std::unique_ptr<Filtered>> filtered;
  if (tc.transform != Transform::kNone) {
    for (size_t i = 0; i < seg_count; ++i) {
      const uint64_t begin = i * seg_size, end = std::min(m, begin + seg_size);
      if (Intersects(tc.new_regions, begin, end)) code_segs.push_back(i);
    }
    filtered = std::async(text ? std::launch::deferred : std::launch::async, filter);
  }

  // One task per whole-file candidate and reference part, then one per segment: keep the smaller
  // of copydiff and stored; on large segments that are mostly literals also try zstd with an old
  // window.
  Plan plan;
  plan.segments.resize(seg_count);
  plan.seg_size = seg_size;
  std::vector<std::optional<EncodedSegment>> whole(ref_levels.size());
  std::atomic<uint64_t> given_up{0};
  const size_t first_segment_task = ref_levels.size() + ref_parts.size();
  std::vector<Status> errors(first_segment_task + seg_count);
  ParallelFor(threads, first_segment_task + seg_count, [&](int worker, size_t task) {
    Compressor* comp = comps[worker].get();
    if (task < ref_levels.size()) {
      const uint64_t bound = plan_bound ? plan_bound->bound.Get() : UINT64_MAX;
      bool over = false;
      auto r = EncodeRef(old, neu, 0, m, 0, n, ref_levels[task], comp, bound, &over);
      if (!r.ok()) {
        errors[task] = r.status();
      } else if (over) {
        ++given_up;
      } else {
        whole[task] = std::move(r).value();
      }
      return;
    }
    if (task < first_segment_task) {
      RefPart& part = ref_parts[task - ref_levels.size()];
      auto r = EncodeRef(old, neu, part.begin, part.end, part.ref_offset, part.ref_length, 0, comp);
      if (r.ok())
        part.seg = std::move(r).value();
      else
        errors[task] = r.status();
      return;
    }
    const size_t i = task - first_segment_task;
    const uint64_t begin = i * seg_size, end = std::min(m, begin + seg_size);
    EncodedSegment best = Stored(neu, begin, end);
    auto cd = EncodeCopyDiff(old, neu, begin, seg_ops[i], options.stream_level, comp);
    if (!cd.ok()) {
      errors[task] = cd.status();
      return;
    }
    if (cd->encoded_size() < best.encoded_size()) best = std::move(cd).value();
    if (text) {
      std::vector<CopyOp> fewer = matched[i];
      PruneCopies(&fewer, begin, kTextLiteralCostLow);
      if (fewer.size() != seg_ops[i].size()) {
        auto alt = EncodeCopyDiff(old, neu, begin, fewer, options.stream_level, comp);
        if (!alt.ok()) {
          errors[task] = alt.status();
          return;
        }
        if (alt->encoded_size() < best.encoded_size()) {
          best = std::move(alt).value();
          seg_ops[i] = std::move(fewer);
        }
      }
    }
    const std::vector<CopyOp>& ops = seg_ops[i];
    uint64_t literal_bytes = 0;
    for (const CopyOp& op : ops) literal_bytes += op.lit_len;
    if (options.try_zstd_ref && !small && n > 0 && literal_bytes * 20 > end - begin) {
      const uint64_t width = std::min(n, options.segment_ref_window);
      const uint64_t center = n * begin / std::max<uint64_t>(m, 1);
      const uint64_t ref_off = ChooseRefWindow(ops, n, width, center);
      auto zr = EncodeRef(old, neu, begin, end, ref_off, width, options.stream_level, comp);
      if (!zr.ok()) {
        errors[task] = zr.status();
        return;
      }
      if (zr->encoded_size() < best.encoded_size()) best = std::move(zr).value();
    }
    plan.segments[i] = std::move(best);
  });
  for (const Status& s : errors) DS_RETURN_IF_ERROR(s);
  st.match_seconds = SecondsSince(t_match);
  st.ref_trials_given_up = given_up.load();

  // The transform's matching in the filtered space: each code segment keeps its smaller encoding.
  uint64_t tables_cost = 0;
  if (tc.transform != Transform::kNone) {
    const std::unique_ptr<Filtered> f = filtered.get();
    const auto t_tr = Clock::now();
    const Bytes& fold = f->fold;
    const Bytes& fnew = f->fnew;
    const Result<SuffixArray>& fsa = f->fsa;
    if (!fsa.ok()) return fsa.status();
    std::vector<std::optional<EncodedSegment>> tseg(code_segs.size());
    std::vector<Status> terr(code_segs.size());
    ParallelFor(threads, code_segs.size(), [&](int worker, size_t k) {
      const size_t i = code_segs[k];
      const uint64_t begin = i * seg_size, end = std::min(m, begin + seg_size);
      std::vector<CopyOp> ops = MatchRange(*fsa, fnew, begin, end);
      PruneCopies(&ops, begin, literal_cost);
      auto cd = EncodeCopyDiff(fold, fnew, begin, ops, options.stream_level, comps[worker].get());
      if (!cd.ok()) {
        terr[k] = cd.status();
        return;
      }
      tseg[k] = std::move(cd).value();
    });
    for (const Status& s : terr) DS_RETURN_IF_ERROR(s);
    uint64_t saved = 0;
    for (size_t k = 0; k < code_segs.size(); ++k) {
      const EncodedSegment& plain = plan.segments[code_segs[k]];
      if (tseg[k]->encoded_size() < plain.encoded_size()) {
        saved += plain.encoded_size() - tseg[k]->encoded_size();
      }
    }
    // The tables the transform needs in the header must be paid for by what it saves.
    tables_cost = TablesSize(tc);
    if (saved > tables_cost) {
      for (size_t k = 0; k < code_segs.size(); ++k) {
        EncodedSegment& plain = plan.segments[code_segs[k]];
        if (tseg[k]->encoded_size() < plain.encoded_size()) {
          tseg[k]->header.transform = tc.transform;
          plain = std::move(*tseg[k]);
        }
      }
      st.transform_saved_bytes = saved - tables_cost;
    }
    st.transform_seconds = f->seconds + SecondsSince(t_tr);
  }
  // A small patch of a multi-segment file: the segments' framing is a visible share of it, so
  // also try all the copies as one segment (cheap: its streams are mostly zeros).
  if (small && seg_count > 1 && plan.size() < kWholeCopyDiffTrial) {
    std::vector<CopyOp> all_ops;
    for (const auto& ops : seg_ops) all_ops.insert(all_ops.end(), ops.begin(), ops.end());
    auto cd = EncodeCopyDiff(old, neu, 0, all_ops, options.stream_level, comps[0].get());
    if (!cd.ok()) return cd.status();
    whole.push_back(std::move(cd).value());
  }
  uint64_t plan_extra = st.transform_saved_bytes > 0 ? tables_cost : 0;
  if (!ref_parts.empty()) {
    Plan parts;
    parts.seg_size = ref_parts[0].end - ref_parts[0].begin;
    for (RefPart& part : ref_parts) parts.segments.push_back(std::move(*part.seg));
    if (parts.size() < plan.size() + plan_extra) {
      plan = std::move(parts);
      plan_extra = 0;
    }
  }
  for (auto& c : whole) {
    if (c.has_value() && c->encoded_size() < plan.size() + plan_extra) {
      Plan single;
      single.seg_size = m;
      single.segments.push_back(std::move(*c));
      plan = std::move(single);
      plan_extra = 0;
    }
  }

  // Assemble.
  uint64_t offset = 0;
  for (const EncodedSegment& seg : plan.segments) {
    if (seg.header.transform != Transform::kNone) ++st.transform_segments;
  }
  if (st.transform_segments > 0) {
    header.minor = 1;  // Code regions are 1.1; nothing of 1.2 is used.
    header.flags |= kFlagCodeRegions;
    header.old_regions = tc.old_regions;
    header.new_regions = tc.new_regions;
    header.address_map = tc.address_map;
  } else {
    st.transform_saved_bytes = 0;
    header.minor = 0;  // Nothing of 1.1 is used: the patch says it is a plain 1.0 patch.
  }
  header.transform_saved = st.transform_saved_bytes;
  for (const EncodedSegment& seg : plan.segments) {
    if (seg.zero_run) header.minor = 3;  // Zero-run streams are 1.3 (and 1.3 has all of 1.1).
  }
  for (EncodedSegment& seg : plan.segments) {
    const uint64_t len = std::min(plan.seg_size, m - offset);
    seg.header.new_offset = offset;
    seg.header.new_length = len;
    seg.header.output_crc32c = Crc32c(neu.subspan(offset, len));
    seg.header.payload_length = seg.payload.size();
    offset += len;
    header.max_segment_output = std::max(header.max_segment_output, len);
    header.max_segment_payload = std::max<uint64_t>(header.max_segment_payload, seg.payload.size());
    header.max_ref_window = std::max(header.max_ref_window, seg.ref_length);
    CountSegment(seg, &st);
  }
  header.segment_count = plan.segments.size();
  st.segments = header.segment_count;
  Bytes patch;
  WriteFileHeader(header, &patch);
  for (const EncodedSegment& seg : plan.segments) WriteSegment(seg.header, seg.payload, &patch);
  st.total_seconds = SecondsSince(t0);
  return patch;
}

// A stream a recompression transform can rebuild: a deflate stream (decoded = its puff), an .xz
// stream liblzma rebuilds (decoded = its content, xz = the settings that reproduce it) or one
// rebuilt from its replay form (decoded = the form).
struct RecompressStream {
  Transform kind = Transform::kNone;
  std::string name;
  uint64_t offset = 0, length = 0;
  Bytes decoded;
  XzParams xz;
  Bytes xz_content;  // Old .xz streams (kind xz-replay, decoded = the form): their content.
  // Old .xz streams: the hash index of their form's content section, built as soon as the stream
  // is decoded (while the new file is still being decoded and proven). It borrows |decoded|'s
  // buffer, which moving the stream keeps; declared after it, it is destroyed first (waiting for
  // the build to end) when a stream is dropped.
  std::shared_future<Result<HashIndex>> content_index;
  // New .xz streams rebuilt from their replay form: whether the form rebuilds the stream's exact
  // bytes, proven on a thread of its own beside the matching (not valid: nothing to prove). Also
  // borrows |decoded|.
  std::shared_future<bool> proven;
};

// The streams of |file|, sorted by offset and disjoint. |prove|: new file (xz settings needed).
std::vector<RecompressStream> FindRecompressStreams(ByteView file, bool prove,
                                                    const GenerateOptions& options) {
  std::vector<RecompressStream> out;
  DeflateStreamLimits dl;
  dl.max_puff = options.max_decoded;
  auto add = [&](Transform kind, const std::string& name, uint64_t offset, uint64_t length,
                 Bytes&& decoded) -> RecompressStream& {
    RecompressStream& r = out.emplace_back();
    r.kind = kind;
    r.name = name;
    r.offset = offset;
    r.length = length;
    r.decoded = std::move(decoded);
    return r;
  };
  for (DeflateStream& d : FindDeflateStreams(file, dl)) {
    add(Transform::kDeflate, d.name, d.offset, d.length, std::move(d.puff));
  }
  XzStreamLimits xl;
  xl.max_content = options.max_decoded;
  xl.max_encoder_memory = options.max_encoder_memory;
  // New streams that can only be rebuilt from their replay forms are proven later, beside the
  // matching (the streams liblzma may rebuild are proven here: that search picks the transform).
  const bool defer_proof = prove && options.max_encoder_memory == 0;
  for (XzStream& x : FindXzStreams(file, prove && !defer_proof, xl)) {
    // Old streams keep both decoded forms: the new namesake picks the one its transform reads.
    if (!prove || defer_proof || !x.reencode) {
      RecompressStream& r =
          add(Transform::kXzReplay, x.name, x.offset, x.length, std::move(x.form));
      r.xz = x.params;
      r.xz_content = std::move(x.content);
      if (defer_proof) {
        const ByteView form = r.decoded, stream = file.subspan(x.offset, x.length);
        r.proven = std::async(std::launch::async, [form, stream] {
                     return XzFromReplayForm(form, stream).ok();
                   }).share();
      }
      Result<ReplayFormLayout> layout = ReplayFormSections(r.decoded);
      if (!prove && layout.ok() && layout->content_length > 0) {
        const ByteView content =
            ByteView(r.decoded).subspan(layout->content_offset, layout->content_length);
        r.content_index =
            std::async(std::launch::async, [content] { return HashIndex::Build(content); }).share();
      }
    } else {
      add(Transform::kXz, x.name, x.offset, x.length, std::move(x.content)).xz = x.params;
    }
  }
  std::sort(out.begin(), out.end(), [](const RecompressStream& a, const RecompressStream& b) {
    return a.offset < b.offset;
  });
  std::vector<RecompressStream> disjoint;
  for (RecompressStream& r : out) {
    if (!disjoint.empty() && r.offset < disjoint.back().offset + disjoint.back().length) continue;
    disjoint.push_back(std::move(r));
  }
  return disjoint;
}

// The copies that rebuild all of |neu| from |old| (one suffix array over |old|).
Result<std::vector<CopyOp>> MatchWhole(ByteView old, ByteView neu) {
  DS_ASSIGN_OR_RETURN(SuffixArray sa, SuffixArray::Build(old));
  return MatchRange(sa, neu, 0, neu.size());
}

// Copies that rebuild the section [begin, +length) of |neu| from the section |old| of a larger
// buffer starting at |old_base|, shifted to that buffer's offsets; through |old_index|, the hash
// index of |old|, when it is given (valid). A hash index, not a suffix array: an .xz content is
// megabytes of mostly unchanged data, which a suffix array takes ~5x as long to sort as the
// index takes to build, for patches ~0.1% smaller (libssl3-deb: 901,019 B vs 901,790 B).
Result<std::vector<CopyOp>> MatchSection(ByteView old, uint64_t old_base, ByteView neu,
                                         uint64_t begin, uint64_t length,
                                         const std::shared_future<Result<HashIndex>>& old_index) {
  if (length == 0) return std::vector<CopyOp>();
  if (old.empty()) return std::vector<CopyOp>{CopyOp{0, 0, length}};
  const std::shared_future<Result<HashIndex>> built =
      old_index.valid()
          ? old_index
          : std::async(std::launch::deferred, [old] { return HashIndex::Build(old); }).share();
  const Result<HashIndex>& index_or = built.get();
  if (!index_or.ok()) return index_or.status();
  const HashIndex& index = *index_or;
  // Halves matched at once (the index is shared; the halves' copies simply follow).
  const uint64_t half = length >= (2u << 20) ? length / 2 : length;
  std::future<std::vector<CopyOp>> second;
  if (half < length) {
    second = std::async(std::launch::async,
                        [&] { return MatchRange(index, neu, begin + half, begin + length); });
  }
  std::vector<CopyOp> ops = MatchRange(index, neu, begin, begin + half);
  if (half < length) {
    std::vector<CopyOp> rest = second.get();
    ops.insert(ops.end(), rest.begin(), rest.end());
  }
  for (CopyOp& op : ops) {
    if (op.copy_len > 0) op.old_pos += old_base;
  }
  return ops;
}

// Where the tokens of an old replay form's parse start (offsets in the parse), and the token
// starting at each byte of its content section (UINT32_MAX: none).
struct OldParseIndex {
  std::vector<bool> start;
  std::vector<uint32_t> at;
};
Result<OldParseIndex> IndexOldParse(ByteView old, const ReplayFormLayout& o) {
  if (o.parse_length >= UINT32_MAX) return Error(ErrorCode::kResourceLimit, "parse too long");
  OldParseIndex x;
  x.start.resize(o.parse_length);
  x.at.assign(o.content_length, UINT32_MAX);
  DS_RETURN_IF_ERROR(ForEachReplayToken(old, [&](const ReplayToken& t) {
    const uint64_t in_parse = t.form_offset - o.parse_offset;
    x.start[in_parse] = true;
    if (t.mapped) x.at[t.content_pos - o.content_offset] = static_cast<uint32_t>(in_parse);
  }));
  return x;
}

// The copies that rebuild the parse of replay form |neu| from that of |old|, aligned through the
// content: where the new content at a token's start was copied from old content at which an old
// token of the same size starts, the new token is taken from that old token (with the copydiff's
// diff bytes mending a length or a distance); the next tokens keep that alignment while the old
// parse has tokens of the same sizes there; the others are literal. |content_ops| rebuild the
// new content section (form offsets); |index| is IndexOldParse(old). Linear (4 bytes per old
// content byte for the lookup) — a suffix array over a parse (small values, long repeats) is slow
// to search and finds matches that do not belong together.
Result<std::vector<CopyOp>> AlignParse(ByteView old, const ReplayFormLayout& o,
                                       const OldParseIndex& index, ByteView neu,
                                       const ReplayFormLayout& n,
                                       const std::vector<CopyOp>& content_ops) {
  auto token_size = [](ByteView form, uint64_t at) { return ReplayTokenBytes(form[at]); };
  const std::vector<bool>& old_start = index.start;
  const std::vector<uint32_t>& old_at = index.at;
  const uint64_t old_end = o.parse_offset + o.parse_length;

  std::vector<CopyOp> ops;
  CopyOp cur;
  bool open = false;
  size_t op_i = 0;
  uint64_t op_new = n.content_offset;  // Where content_ops[op_i] starts in the new form.
  int64_t delta = 0;
  bool aligned = false;
  DS_RETURN_IF_ERROR(ForEachReplayToken(neu, [&](const ReplayToken& t) {
    const uint64_t p = t.form_offset;
    const uint64_t size = token_size(neu, p);
    const uint64_t c = t.content_pos;
    while (t.mapped && op_i < content_ops.size() &&
           c >= op_new + content_ops[op_i].copy_len + content_ops[op_i].lit_len) {
      op_new += content_ops[op_i].copy_len + content_ops[op_i].lit_len;
      ++op_i;
    }
    bool found = false;
    if (t.mapped && op_i < content_ops.size() && c >= op_new &&
        c < op_new + content_ops[op_i].copy_len) {
      const uint64_t old_c = content_ops[op_i].old_pos + (c - op_new);
      const uint32_t j = old_c >= o.content_offset && old_c - o.content_offset < old_at.size()
                             ? old_at[old_c - o.content_offset]
                             : UINT32_MAX;
      if (j != UINT32_MAX && token_size(old, o.parse_offset + j) == size) {
        delta = static_cast<int64_t>(o.parse_offset + j) - static_cast<int64_t>(p);
        aligned = found = true;
      }
    }
    if (!found && aligned) {
      const uint64_t q = p + delta;
      found = q >= o.parse_offset && q < old_end && old_start[q - o.parse_offset] &&
              token_size(old, q) == size;
    }
    if (found) {
      const uint64_t q = p + delta;
      if (open && cur.lit_len == 0 && cur.copy_len > 0 && cur.old_pos + cur.copy_len == q) {
        cur.copy_len += size;
      } else {
        if (open) ops.push_back(cur);
        cur = CopyOp{q, size, 0};
        open = true;
      }
    } else if (open) {
      cur.lit_len += size;
    } else {
      cur = CopyOp{0, 0, size};
      open = true;
    }
  }));
  if (open) ops.push_back(cur);
  return ops;
}

// Two xz replay forms are matched section by section: content against content through a hash
// index, the parse aligned through the content (AlignParse), the few header and frame bytes as
// literals.
Result<std::vector<CopyOp>> MatchReplayForms(
    ByteView old, ByteView neu, const std::shared_future<Result<HashIndex>>& old_index) {
  DS_ASSIGN_OR_RETURN(ReplayFormLayout o, ReplayFormSections(old));
  DS_ASSIGN_OR_RETURN(ReplayFormLayout n, ReplayFormSections(neu));
  // The old parse is indexed while the contents are matched.
  std::future<Result<OldParseIndex>> parse_index =
      std::async(std::launch::async, [&] { return IndexOldParse(old, o); });
  Result<std::vector<CopyOp>> content =
      MatchSection(old.subspan(o.content_offset, o.content_length), o.content_offset, neu,
                   n.content_offset, n.content_length, old_index);
  Result<OldParseIndex> index = parse_index.get();
  if (!content.ok()) return content.status();
  if (!index.ok()) return index.status();
  DS_ASSIGN_OR_RETURN(std::vector<CopyOp> parse, AlignParse(old, o, *index, neu, n, *content));
  std::vector<CopyOp> ops;
  ops.push_back(CopyOp{0, 0, n.content_offset});  // Header: literal.
  ops.insert(ops.end(), content->begin(), content->end());
  ops.push_back(CopyOp{0, 0, n.frame_length});  // Frame: literal.
  ops.insert(ops.end(), parse.begin(), parse.end());
  return ops;
}

// A piece of the new file in a recompression plan: a stream rebuilt from its decoded form
// (pair >= 0) or bytes between streams, encoded plainly.
struct Piece {
  uint64_t begin = 0, end = 0;
  int pair = -1;
};

// The bytes of one encoded piece and, for a stream, what its plain encoding would have cost.
struct PieceResult {
  EncodedSegment seg;
  uint64_t plain_size = 0;
  Status status;
};

// The patch with the recompression transforms: each deflate or .xz stream of the new file that
// has a namesake of the same kind in the old file (gzip member by index, zip entry or ar member by
// name, a whole .xz file) becomes one segment rebuilt from its decoded form (puff or content),
// diffed against the old stream's; the bytes between streams are encoded plainly. Empty when no
// stream pairs up or no such segment beats its plain encoding. |plan_bound| learns the most the
// patch can cost once every stream's coding has been probed (it may not be called at all).
Result<Bytes> GenerateRecompress(ByteView old, ByteView neu,
                                 std::vector<RecompressStream> new_streams,
                                 std::vector<RecompressStream> old_streams,
                                 const SharedSuffixArray& old_sa, const SharedHashes& file_hashes,
                                 const GenerateOptions& options, GenerateStats& st,
                                 PlanBound& plan_bound) {
  const auto t0 = Clock::now();
  if (new_streams.empty()) return Bytes();
  std::vector<std::pair<size_t, size_t>> pairs;  // (new stream, old stream)
  for (size_t i = 0; i < new_streams.size(); ++i) {
    for (size_t j = 0; j < old_streams.size(); ++j) {
      const bool xz_pair =
          new_streams[i].kind == Transform::kXz && old_streams[j].kind == Transform::kXzReplay;
      if ((old_streams[j].kind == new_streams[i].kind || xz_pair) &&
          old_streams[j].name == new_streams[i].name) {
        pairs.emplace_back(i, j);
        break;
      }
    }
  }
  if (pairs.empty()) return Bytes();

  const uint64_t m = neu.size();
  std::vector<Piece> pieces;
  auto add_gap = [&](uint64_t begin, uint64_t end) {
    for (uint64_t b = begin; b < end; b += options.segment_size) {
      pieces.push_back({b, std::min(end, b + options.segment_size), -1});
    }
  };
  uint64_t pos = 0;
  for (size_t k = 0; k < pairs.size(); ++k) {
    const RecompressStream& ns = new_streams[pairs[k].first];
    add_gap(pos, ns.offset);
    pieces.push_back({ns.offset, ns.offset + ns.length, static_cast<int>(k)});
    pos = ns.offset + ns.length;
  }
  add_gap(pos, m);

  const int threads = ThreadCount(options);
  std::vector<std::unique_ptr<Compressor>> comps;
  for (int i = 0; i < threads; ++i) comps.push_back(std::make_unique<Compressor>());
  FileHeader header;
  header.old_size = old.size();
  header.new_size = m;
  // A large stream is LZMA2-coded in halves when no whole-file candidate of the plain patch will
  // be running beside its coding (that candidate keeps the second core busy; on libssl3-deb the
  // halves then only make the candidate finish last, alone).
  const bool halves = !plan_bound.waiter.Get();
  header.old_sha256 = file_hashes.get().old_sha256;
  header.new_sha256 = file_hashes.get().new_sha256;

  // Streams first (the slow ones), then the gaps.
  std::vector<size_t> order(pieces.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](size_t i) { return pieces[i].pair >= 0; });
  std::vector<PieceResult> results(pieces.size());
  // The patch's bound: no piece costs more than its bytes stored (each piece keeps the smallest of
  // its encodings, stored among them), nor a stream piece more than 16 bytes over its transform's
  // probed coding (it keeps the transform unless the plain encoding is within 16 bytes of it);
  // generous room for the headers. Published once every stream piece has its bound.
  constexpr uint64_t kHeaderRoom = 512;
  std::mutex bound_mu;
  uint64_t patch_bound = 4096;
  size_t streams_pending = 0;
  bool bound_published = false;
  for (const Piece& piece : pieces) {
    patch_bound += piece.end - piece.begin + kHeaderRoom;
    if (piece.pair >= 0) ++streams_pending;
  }
  auto piece_bound = [&](const Piece& piece, uint64_t payload) {
    std::lock_guard<std::mutex> lock(bound_mu);
    const uint64_t stored = piece.end - piece.begin;
    patch_bound -= stored - std::min(stored, payload);
    if (--streams_pending == 0) {
      plan_bound.bound.Set(patch_bound);
      bound_published = true;
    }
  };
  ParallelFor(threads, pieces.size(), [&](int worker, size_t task) {
    const Piece& piece = pieces[order[task]];
    PieceResult& r = results[order[task]];
    Compressor* comp = comps[worker].get();
    // Whether the new stream's form is proven to rebuild it (waits for the proof).
    auto proven = [&] {
      const std::shared_future<bool> proof = new_streams[pairs[piece.pair].first].proven;
      return !proof.valid() || proof.get();
    };
    // A stream piece reports its bound once: from its transform's probe, or else as stored.
    bool bounded = piece.pair < 0;
    auto report = [&](uint64_t payload) {
      if (bounded) return;
      bounded = true;
      piece_bound(piece, payload);
    };
    struct ReportStored {
      std::function<void()> fn;
      ~ReportStored() { fn(); }
    } report_stored{[&] { report(UINT64_MAX); }};
    // The plain encoding, as the generic patch would make it.
    auto encode_plain = [&]() -> Status {
      r.seg = Stored(neu, piece.begin, piece.end);
      r.plain_size = r.seg.encoded_size();
      if (piece.end - piece.begin <= 64) return Status::Ok();
      const Result<SuffixArray>& sa = old_sa.get();
      if (!sa.ok()) return sa.status();
      std::vector<CopyOp> ops = MatchRange(*sa, neu, piece.begin, piece.end);
      PruneCopies(&ops, piece.begin, kBinaryLiteralCost);
      r.seg = Stored(neu, piece.begin, piece.end);
      Result<EncodedSegment> cd =
          EncodeCopyDiff(old, neu, piece.begin, ops, options.stream_level, comp);
      if (!cd.ok()) return cd.status();
      if (cd->encoded_size() < r.seg.encoded_size()) r.seg = std::move(cd).value();
      r.plain_size = r.seg.encoded_size();
      return Status::Ok();
    };
    if (piece.pair < 0) {
      r.status = encode_plain();
      return;
    }
    const RecompressStream& ns = new_streams[pairs[piece.pair].first];
    const RecompressStream& os = old_streams[pairs[piece.pair].second];
    // An unchanged stream is a plain copy.
    if (ns.length == os.length &&
        std::memcmp(neu.data() + ns.offset, old.data() + os.offset, ns.length) == 0) {
      r.status = encode_plain();
      return;
    }
    // In the decoded space. A new stream liblzma rebuilds reads the old one's content.
    const ByteView old_decoded = ns.kind == Transform::kXz && os.kind == Transform::kXzReplay
                                     ? ByteView(os.xz_content)
                                     : ByteView(os.decoded);
    const uint64_t p = ns.decoded.size();
    Result<std::vector<CopyOp>> matched =
        ns.kind == Transform::kXzReplay
            ? MatchReplayForms(old_decoded, ns.decoded, os.content_index)
            : MatchWhole(old_decoded, ns.decoded);
    if (!matched.ok()) {
      r.status = matched.status();
      return;
    }
    std::vector<CopyOp> dops = std::move(matched).value();
    const bool text = LooksLikeText(ns.decoded);
    PruneCopies(&dops, 0, text ? kTextLiteralCost : kBinaryLiteralCost);
    Result<EncodedSegment> best =
        EncodeCopyDiff(old_decoded, ns.decoded, 0, dops, options.stream_level, comp,
                       /*parallel_streams=*/p >= (4u << 20), halves,
                       [&](uint64_t payload) { report(proven() ? payload + 16 : UINT64_MAX); });
    if (!best.ok()) {
      r.status = best.status();
      return;
    }
    // Text with many small edits: LZMA2 over the whole old decoded form often does better.
    if (text && best->encoded_size() * 100 > p && p <= options.whole_file_limit) {
      Result<EncodedSegment> lz =
          EncodeRef(old_decoded, ns.decoded, 0, p, 0, old_decoded.size(), 0, comp);
      if (!lz.ok()) {
        r.status = lz.status();
        return;
      }
      if (lz->encoded_size() < best->encoded_size()) best = std::move(lz);
    }
    // A stream whose form does not rebuild it is encoded plainly, like the bytes between streams.
    if (!proven()) {
      r.status = encode_plain();
      return;
    }
    // A changed compressed stream differs in its bytes from the first change on, so its plain
    // encoding costs about as much as the rest of the stream: worth computing (to compare) only
    // when the transform did not already do better than half the stream (the whole patch is
    // still compared with the plain patch, so the plan never loses to it).
    // Otherwise the stored size stands for it (the stream is copied only if it is kept).
    const bool plain_estimated = best->encoded_size() * 2 < ns.length;
    if (plain_estimated) {
      r.plain_size = ns.length + kSegmentOverhead;
    } else {
      r.status = encode_plain();
      if (!r.status.ok()) return;
    }
    // The transform's fields cost a few bytes more than a plain segment header.
    if (best->encoded_size() + 16 >= r.plain_size) {
      if (plain_estimated) r.seg = Stored(neu, piece.begin, piece.end);
    } else {
      SegmentHeader& h = best->header;
      h.transform = ns.kind;
      h.old_offset = os.offset;
      h.old_length = os.length;
      h.old_decoded_length = old_decoded.size();
      h.decoded_length = p;
      if (ns.kind == Transform::kXz) {
        h.xz_preset = ns.xz.preset;
        h.xz_check = ns.xz.check;
        h.xz_block_size = ns.xz.block_size;
      }
      r.seg = std::move(best).value();
    }
  });
  for (const PieceResult& r : results) DS_RETURN_IF_ERROR(r.status);

  uint64_t saved = 0, recompress_segments = 0;
  for (PieceResult& r : results) {
    if (!IsRecompressTransform(r.seg.header.transform)) continue;
    ++recompress_segments;
    saved += r.plain_size - r.seg.encoded_size();
  }
  // Without a recompression segment the plan is a plain patch cut at the streams' bounds: dropped,
  // unless its bound was published — the plain patch may then have given up a candidate that only
  // this plan is known to beat.
  if (recompress_segments == 0 && !bound_published) return Bytes();
  header.minor = 0;
  if (recompress_segments > 0) {
    header.flags = kFlagRecompress;
    header.minor = 2;
  }
  for (const PieceResult& r : results) {
    if (r.seg.zero_run) header.minor = std::max<uint8_t>(header.minor, 3);  // Zero-run: 1.3.
    if (r.seg.header.transform == Transform::kXzReplay) header.minor = 4;   // xz-replay: 1.4.
  }
  header.recompress_saved = saved;
  for (size_t i = 0; i < pieces.size(); ++i) {
    EncodedSegment& seg = results[i].seg;
    const uint64_t len = pieces[i].end - pieces[i].begin;
    seg.header.new_offset = pieces[i].begin;
    seg.header.new_length = len;
    seg.header.output_crc32c = Crc32c(neu.subspan(pieces[i].begin, len));
    seg.header.payload_length = seg.payload.size();
    header.max_segment_output = std::max(header.max_segment_output, len);
    header.max_segment_payload = std::max<uint64_t>(header.max_segment_payload, seg.payload.size());
    if (IsRecompressTransform(seg.header.transform)) {
      header.max_decoded =
          std::max({header.max_decoded, seg.header.decoded_length, seg.header.old_decoded_length});
      if (seg.header.transform == Transform::kXz) {
        const XzParams xp{seg.header.xz_preset, seg.header.xz_check, seg.header.xz_block_size};
        header.max_encoder_memory =
            std::max(header.max_encoder_memory, XzEncoderMemory(xp, seg.header.decoded_length));
      }
    } else {
      header.max_ref_window = std::max(header.max_ref_window, seg.ref_length);
    }
  }
  header.segment_count = pieces.size();
  GenerateStats rs;
  rs.segments = pieces.size();
  for (const PieceResult& r : results) CountSegment(r.seg, &rs);
  rs.recompress_segments = recompress_segments;
  rs.recompress_saved_bytes = saved;
  rs.recompress_seconds = SecondsSince(t0);
  st = rs;
  Bytes patch;
  WriteFileHeader(header, &patch);
  for (const PieceResult& r : results) WriteSegment(r.seg.header, r.seg.payload, &patch);
  return patch;
}

}  // namespace

Result<Bytes> GeneratePatch(ByteView old, ByteView neu, const GenerateOptions& options,
                            GenerateStats* stats) {
  const auto t0 = Clock::now();
  GenerateStats local_stats;
  GenerateStats& st = stats ? *stats : local_stats;
  st = GenerateStats();
  if (options.segment_size == 0 || options.stream_level < 1 || options.stream_level > 22 ||
      options.ref_level < 1 || options.ref_level > 22) {
    return Error(ErrorCode::kInvalidArgument, "bad generator options");
  }
  const bool recompress = options.try_recompress && !old.empty() && !neu.empty();
  if (!recompress) {
    return GenerateGeneric(old, neu, options, st, SortWhenNeeded(old), HashWhenNeeded(old, neu));
  }
  // The plain patch is made on threads of its own while the recompression plan is: finding the
  // streams (and proving that they rebuild), then matching and coding their decoded forms. Both
  // have single-threaded stretches (decoding, suffix sorting), which the other fills.
  GenerateStats ps;
  // The old file's suffix array serves the plain patch and the plan's bytes between streams.
  const SharedSuffixArray old_sa =
      std::async(std::launch::async, [old] { return SuffixArray::Build(old); }).share();
  // Both patches write the same hashes: computed once, on the plain patch's hashing thread.
  const SharedHashes hashes = HashWhenNeeded(old, neu);
  // The most the plan can cost, for the plain patch's whole-file candidates (no bound when there
  // is no plan).
  PlanBound plan_bound;
  std::future<Result<Bytes>> plain_future = std::async(std::launch::async, [&] {
    return GenerateGeneric(old, neu, options, ps, old_sa, hashes, &plan_bound);
  });
  std::future<std::vector<RecompressStream>> old_streams =
      std::async(std::launch::async, [&] { return FindRecompressStreams(old, false, options); });
  std::future<std::vector<RecompressStream>> new_streams =
      std::async(std::launch::async, [&] { return FindRecompressStreams(neu, true, options); });
  // No stream on either side: no plan, so the plain patch need not wait for its bound.
  std::vector<RecompressStream> old_found = old_streams.get();
  if (old_found.empty()) plan_bound.bound.Set(UINT64_MAX);
  std::vector<RecompressStream> streams = new_streams.get();
  if (streams.empty()) plan_bound.bound.Set(UINT64_MAX);
  GenerateStats rs;
  Result<Bytes> recompressed = GenerateRecompress(
      old, neu, std::move(streams), std::move(old_found), old_sa, hashes, options, rs, plan_bound);
  plan_bound.bound.Set(UINT64_MAX);
  Result<Bytes> plain = plain_future.get();
  if (!plain.ok()) return plain;
  if (!recompressed.ok()) return recompressed.status();
  // Never larger than the plain patch.
  if (!recompressed->empty() && recompressed->size() < plain->size()) {
    st = rs;
    st.ref_trials_given_up = ps.ref_trials_given_up;
    st.total_seconds = SecondsSince(t0);
    return recompressed;
  }
  st = ps;
  st.recompress_seconds = rs.recompress_seconds;
  st.total_seconds = SecondsSince(t0);
  return plain;
}

}  // namespace ds::delta
