// VCDIFF encoder: a parse per target window against the whole old file (see vcdiff_gen.h), then
// instruction coding with the default code table.
#include <lzma.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "delta/suffix_array.h"
#include "delta/vcdiff_format.h"
#include "delta/vcdiff_gen.h"

namespace ds::delta {
namespace {

using namespace vcdiff;  // NOLINT: the format's constants.
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMinCopy = 4;
// A continuation of a recent alignment at least this long is taken without asking the suffix
// array for something better.
constexpr uint64_t kGoodEnough = 32;
// Sparse probing in unmatched regions, as in the copydiff matcher.
constexpr uint64_t kUsefulMatch = 12;
constexpr int kMissShift = 6;
constexpr uint64_t kMaxStep = 8;
constexpr int kReps = 4;
constexpr int kHashBits = 18;
// The optimal parse: positions per block, the match length taken without weighing alternatives,
// and how many lengths of each candidate are tried (every one up to this, then the whole match).
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kNiceLen = 256;
constexpr uint64_t kAllLengths = 40;
// Remembered continuation lengths (see RepLen).
constexpr size_t kRepMemo = 64;

enum class Kind : uint8_t { kNone, kSource, kTarget, kRun };

// One parsed instruction. For kSource |addr| is an old-file offset, for kTarget a window offset.
struct Op {
  uint8_t type;  // kAdd, kRun, kCopy.
  bool target;
  uint64_t size;
  uint64_t addr;  // kAdd: window offset of the bytes; kRun: unused.
};

struct Cand {
  Kind kind = Kind::kNone;
  uint64_t len = 0;
  uint64_t addr = 0;
};

size_t CopyInstCost(uint64_t len) { return len >= 4 && len <= 18 ? 1 : 1 + IntSize(len); }

uint64_t CommonLen(const uint8_t* a, const uint8_t* b, uint64_t limit) {
  uint64_t i = 0;
  while (i + 8 <= limit) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    if (x != y) return i + (__builtin_ctzll(x ^ y) >> 3);
    i += 8;
  }
  while (i < limit && a[i] == b[i]) ++i;
  return i;
}

uint32_t Hash4(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return (v * 2654435761u) >> (32 - kHashBits);
}

// Parses new[ws, we) into ops: an optimal parse over blocks of positions (as in LZMA's encoder).
// For each position in a block, the cheapest known way to reach it is kept together with the
// path's recent alignments and near address cache; candidates found there (continuations of those
// alignments, the longest old-file match, an earlier match in the window, a run) relax the
// positions they reach with every useful length. A block ends after kBlock positions or at a
// match of kNiceLen bytes or more, which is then taken as is.
class WindowParser {
 public:
  WindowParser(const SuffixArray& sa, ByteView neu, uint64_t ws, uint64_t we)
      : sa_(sa), old_(sa.text()), neu_(neu), ws_(ws), we_(we), table_(size_t{1} << kHashBits, -1) {}

  std::vector<Op> Parse() {
    uint64_t i = ws_;
    add_start_ = ws_;
    while (i < we_) i = ParseBlock(i);
    FlushAdd(we_);
    return std::move(ops_);
  }

 private:
  struct Node {
    uint32_t cost = UINT32_MAX;
    uint32_t from = 0;        // Block-relative position this node was reached from.
    Kind kind = Kind::kNone;  // kNone: a literal byte.
    uint64_t len = 0, addr = 0;
    int64_t reps[kReps] = {0, 0, 0, 0};
    uint64_t near[kDefaultNearSize] = {0, 0, 0, 0};  // The path's near cache.
    uint32_t next_slot = 0;
    bool in_add = false;
  };

  void FlushAdd(uint64_t end) {
    if (end > add_start_) ops_.push_back(Op{kAdd, false, end - add_start_, add_start_ - ws_});
  }

  void Insert(uint64_t i) {
    if (i + 4 <= we_ && i >= inserted_to_) {
      table_[Hash4(neu_.data() + i)] = static_cast<int64_t>(i);
      inserted_to_ = i + 1;
    }
  }

  static void PushRep(int64_t* reps, int64_t off) {
    int k = 0;
    while (k < kReps - 1 && reps[k] != off) ++k;
    for (; k > 0; --k) reps[k] = reps[k - 1];
    reps[0] = off;
  }

  // Address-space value of a candidate (source: old offset; target: past the whole old file).
  uint64_t SpaceAddr(Kind kind, uint64_t addr) const {
    return kind == Kind::kTarget ? est_seg_ + (addr - ws_) : addr;
  }

  // The address's cost on the path through |at|: its near cache, the committed same cache.
  size_t AddrCost(const Node& at, Kind kind, uint64_t addr, uint64_t pos) const {
    const uint64_t a = SpaceAddr(kind, addr);
    if (cache_.SameHit(a)) return 1;
    size_t c = std::min(IntSize(a), IntSize(est_seg_ + (pos - ws_) - a));
    for (uint64_t nr : at.near) {
      if (a >= nr) c = std::min(c, IntSize(a - nr));
    }
    return c;
  }

  // Commits the ops on the best path to block-relative position |end|.
  void Commit(uint64_t base, uint32_t end) {
    path_.clear();
    for (uint32_t p = end; p > 0; p = nodes_[p].from) path_.push_back(p);
    for (auto it = path_.rbegin(); it != path_.rend(); ++it) {
      const Node& nd = nodes_[*it];
      if (nd.kind == Kind::kNone) continue;
      const uint64_t at = base + nd.from;
      Emit(at, nd.kind, nd.len, nd.addr);
    }
    std::copy(nodes_[end].reps, nodes_[end].reps + kReps, reps_);
  }

  void Emit(uint64_t at, Kind kind, uint64_t len, uint64_t addr) {
    FlushAdd(at);
    if (kind == Kind::kRun) {
      ops_.push_back(Op{kRun, false, len, neu_[at]});
    } else {
      ops_.push_back(
          Op{kCopy, kind == Kind::kTarget, len, kind == Kind::kTarget ? addr - ws_ : addr});
      cache_.Encode(SpaceAddr(kind, addr), est_seg_ + (at - ws_), &scratch_);
      scratch_.clear();
    }
    add_start_ = at + len;
  }

  // Length of the match between new[i..] and old[i + off..], at most |limit|. A match found at
  // an earlier position for the same offset still holds, shorter by the distance, so each
  // offset's length is remembered: without it, every position inside a match would compare
  // the rest of the match again.
  uint64_t RepLen(uint64_t i, int64_t off, uint64_t limit) {
    RepMemo& m = memo_[static_cast<uint64_t>(off) * 0x9E3779B97F4A7C15ull >> 58];
    if (m.valid && m.off == off && i >= m.at && i < m.at + m.len) {
      return std::min(limit, m.len - (i - m.at));
    }
    const uint64_t j = i + static_cast<uint64_t>(off);
    const uint64_t len =
        CommonLen(old_.data() + j, neu_.data() + i, std::min<uint64_t>(limit, old_.size() - j));
    m = RepMemo{true, off, i, len};
    return len;
  }

  // Candidates at |i| for a path whose recent alignments are |reps|.
  void Candidates(uint64_t i, const int64_t* reps, std::vector<Cand>* out) {
    out->clear();
    const uint8_t* w = neu_.data();
    const uint64_t limit = we_ - i;
    if (limit < kMinCopy) return;
    uint64_t best_len = 0;
    if (w[i] == w[i + 1] && w[i] == w[i + 2] && w[i] == w[i + 3]) {
      uint64_t r = 4;
      while (r < limit && w[i + r] == w[i]) ++r;
      out->push_back(Cand{Kind::kRun, r, 0});
      best_len = r;
    }
    const int64_t n = static_cast<int64_t>(old_.size());
    for (int k = 0; k < kReps; ++k) {
      const int64_t j = static_cast<int64_t>(i) + reps[k];
      if (j < 0 || j >= n) continue;
      bool dup = false;
      for (int q = 0; q < k; ++q) dup |= reps[q] == reps[k];
      if (dup) continue;
      const uint64_t len = RepLen(i, reps[k], limit);
      if (len >= kMinCopy) {
        out->push_back(Cand{Kind::kSource, len, static_cast<uint64_t>(j)});
        best_len = std::max(best_len, len);
      }
    }
    if (best_len >= kGoodEnough) return;
    const int64_t t = table_[Hash4(w + i)];
    if (t >= 0 && static_cast<uint64_t>(t) < i) {
      const uint64_t len = CommonLen(w + t, w + i, limit);
      if (len >= kMinCopy) {
        out->push_back(Cand{Kind::kTarget, len, static_cast<uint64_t>(t)});
        best_len = std::max(best_len, len);
      }
    }
    // The old-file match found one position earlier still holds one byte shorter.
    if (sa_at_ + 1 == i && sa_len_ > 1) {
      ++sa_at_;
      --sa_len_;
      ++sa_pos_;
    }
    if (sa_at_ != i || sa_len_ < kUsefulMatch) {
      if (i < next_probe_) return;
      uint64_t pos;
      const uint64_t len = sa_.LongestMatch(neu_.subspan(i, limit), &pos);
      sa_at_ = i;
      sa_len_ = len;
      sa_pos_ = pos;
      misses_ = len >= kUsefulMatch ? 0 : misses_ + 1;
      next_probe_ = i + std::min<uint64_t>(1 + (misses_ >> kMissShift), kMaxStep);
    }
    if (sa_len_ >= kMinCopy) out->push_back(Cand{Kind::kSource, sa_len_, sa_pos_});
  }

  // Parses from |start|; returns where the next block starts.
  uint64_t ParseBlock(uint64_t start) {
    const uint64_t span = std::min<uint64_t>(kBlock, we_ - start);
    nodes_.assign(span + 1 + kNiceLen, Node());
    Node& root = nodes_[0];
    root.cost = 0;
    std::copy(reps_, reps_ + kReps, root.reps);
    std::copy(cache_.near_slots().begin(), cache_.near_slots().end(), root.near);
    root.next_slot = cache_.next_slot();
    root.in_add = add_start_ < start;
    uint32_t end = static_cast<uint32_t>(span);
    for (uint32_t p = 0; p < span; ++p) {
      const uint64_t i = start + p;
      const Node& nd = nodes_[p];
      if (nd.cost == UINT32_MAX) {
        Insert(i);
        continue;
      }
      // A literal byte.
      Relax(p + 1, nd.cost + 1 + (nd.in_add ? 0 : 1), p, Kind::kNone, 0, 0, nd.reps, nd.near,
            nd.next_slot, true);
      Candidates(i, nd.reps, &cands_);
      Insert(i);
      for (const Cand& c : cands_) {
        if (c.len >= kNiceLen) {
          // Take it as is: commit the path here, then the long match.
          Commit(start, p);
          Emit(i, c.kind, c.len, c.addr);
          if (c.kind == Kind::kSource) {
            PushRep(reps_, static_cast<int64_t>(c.addr) - static_cast<int64_t>(i));
          }
          for (uint64_t k = i; k < i + c.len; k += (k < i + 64 ? 1 : 4)) Insert(k);
          return i + c.len;
        }
      }
      for (const Cand& c : cands_) {
        const Node& from = nodes_[p];
        int64_t reps[kReps];
        std::copy(from.reps, from.reps + kReps, reps);
        uint64_t near[kDefaultNearSize];
        std::copy(from.near, from.near + kDefaultNearSize, near);
        uint32_t slot = from.next_slot;
        size_t addr_cost = 0;
        if (c.kind == Kind::kRun) {
          addr_cost = 1;  // The run's byte.
        } else {
          addr_cost = AddrCost(from, c.kind, c.addr, i);
          near[slot] = SpaceAddr(c.kind, c.addr);
          slot = (slot + 1) % kDefaultNearSize;
          if (c.kind == Kind::kSource) {
            PushRep(reps, static_cast<int64_t>(c.addr) - static_cast<int64_t>(i));
          }
        }
        const uint64_t max_len = std::min<uint64_t>(c.len, span + kNiceLen - p);
        // Every length up to kAllLengths, then the whole match.
        const uint64_t all = std::min<uint64_t>(max_len, kAllLengths);
        for (uint64_t len = kMinCopy; len <= max_len;
             len = len < all ? len + 1 : max_len + (len == max_len)) {
          const size_t inst = c.kind == Kind::kRun ? 1 + IntSize(len) : CopyInstCost(len);
          Relax(static_cast<uint32_t>(p + len), from.cost + static_cast<uint32_t>(inst + addr_cost),
                p, c.kind, len, c.addr, reps, near, slot, false);
          if (len == max_len) break;
        }
      }
    }
    Commit(start, end);
    return start + end;
  }

  void Relax(uint32_t to, uint32_t cost, uint32_t from, Kind kind, uint64_t len, uint64_t addr,
             const int64_t* reps, const uint64_t* near, uint32_t next_slot, bool in_add) {
    Node& nd = nodes_[to];
    if (cost >= nd.cost) return;
    nd.cost = cost;
    nd.from = from;
    nd.kind = kind;
    nd.len = len;
    nd.addr = addr;
    std::copy(reps, reps + kReps, nd.reps);
    std::copy(near, near + kDefaultNearSize, nd.near);
    nd.next_slot = next_slot;
    nd.in_add = in_add;
  }

  const SuffixArray& sa_;
  ByteView old_, neu_;
  uint64_t ws_, we_;
  // Address-cost estimates take the source segment to be the whole old file.
  uint64_t est_seg_ = old_.size();
  AddressCache cache_;
  Bytes scratch_;
  std::vector<int64_t> table_;
  uint64_t inserted_to_ = 0;
  int64_t reps_[kReps] = {0, 0, 0, 0};
  uint64_t add_start_ = 0;
  uint64_t misses_ = 0;
  uint64_t next_probe_ = 0;
  uint64_t sa_at_ = UINT64_MAX, sa_len_ = 0, sa_pos_ = 0;
  struct RepMemo {
    bool valid = false;
    int64_t off = 0;
    uint64_t at = 0, len = 0;
  };
  RepMemo memo_[kRepMemo];
  std::vector<Node> nodes_;
  std::vector<uint32_t> path_;
  std::vector<Cand> cands_;
  std::vector<Op> ops_;
};

// Turns ops into code-table opcodes, pairing neighbours where the default table allows.
class InstWriter {
 public:
  explicit InstWriter(Bytes* inst) : inst_(inst) {}

  void Add(uint8_t type, uint64_t size, uint8_t mode) {
    if (has_pending_ && TryPair(type, size, mode)) {
      has_pending_ = false;
      return;
    }
    Flush();
    pending_ = {type, size, mode};
    has_pending_ = true;
  }

  void Flush() {
    if (!has_pending_) return;
    has_pending_ = false;
    const auto [type, size, mode] = pending_;
    if (type == kRun) {
      inst_->push_back(0);
      WriteInt(inst_, size);
    } else if (type == kAdd) {
      if (size >= 1 && size <= 17) {
        inst_->push_back(static_cast<uint8_t>(1 + size));
      } else {
        inst_->push_back(1);
        WriteInt(inst_, size);
      }
    } else if (size >= 4 && size <= 18) {
      inst_->push_back(static_cast<uint8_t>(19 + mode * 16 + (size - 3)));
    } else {
      inst_->push_back(static_cast<uint8_t>(19 + mode * 16));
      WriteInt(inst_, size);
    }
  }

 private:
  struct Pending {
    uint8_t type;
    uint64_t size;
    uint8_t mode;
  };

  bool TryPair(uint8_t type, uint64_t size, uint8_t mode) {
    const Pending& p = pending_;
    if (p.type == kAdd && p.size >= 1 && p.size <= 4 && type == kCopy) {
      if (mode <= 5 && size >= 4 && size <= 6) {
        inst_->push_back(static_cast<uint8_t>(163 + mode * 12 + (p.size - 1) * 3 + (size - 4)));
        return true;
      }
      if (mode >= 6 && mode <= 8 && size == 4) {
        inst_->push_back(static_cast<uint8_t>(235 + (mode - 6) * 4 + (p.size - 1)));
        return true;
      }
    }
    if (p.type == kCopy && p.size == 4 && type == kAdd && size == 1) {
      inst_->push_back(static_cast<uint8_t>(247 + p.mode));
      return true;
    }
    return false;
  }

  Bytes* inst_;
  Pending pending_{};
  bool has_pending_ = false;
};

// One persistent xz stream per section type, as xdelta3 keeps: each section is the stream's
// continuation up to an LZMA_SYNC_FLUSH, so its decoder (which treats the end of a stream as an
// error) decodes section after section with the state carried over. The stream is never finished.
class SecondaryLzma {
 public:
  SecondaryLzma() = default;
  ~SecondaryLzma() { lzma_end(&strm_); }
  SecondaryLzma(const SecondaryLzma&) = delete;
  SecondaryLzma& operator=(const SecondaryLzma&) = delete;

  // |dict| bounds the decoder's memory: the most this section type will ever hold.
  Status Init(uint64_t dict) {
    lzma_options_lzma opt;
    if (lzma_lzma_preset(&opt, 9)) return Error(ErrorCode::kInternal, "lzma preset");
    opt.dict_size =
        static_cast<uint32_t>(std::clamp<uint64_t>(dict, LZMA_DICT_SIZE_MIN, uint64_t{64} << 20));
    lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
    if (lzma_stream_encoder(&strm_, filters, LZMA_CHECK_NONE) != LZMA_OK) {
      return Error(ErrorCode::kInternal, "lzma encoder init failed");
    }
    return Status::Ok();
  }

  // Appends the compressed continuation for |in| to |out|.
  Status Section(ByteView in, Bytes* out) {
    strm_.next_in = in.data();
    strm_.avail_in = in.size();
    uint8_t buf[1 << 14];
    for (;;) {
      strm_.next_out = buf;
      strm_.avail_out = sizeof(buf);
      const lzma_ret rc = lzma_code(&strm_, LZMA_SYNC_FLUSH);
      out->insert(out->end(), buf, buf + (sizeof(buf) - strm_.avail_out));
      if (rc == LZMA_STREAM_END) return Status::Ok();  // The flush is complete.
      if (rc != LZMA_OK) return Error(ErrorCode::kInternal, "lzma encoder failed");
    }
  }

 private:
  lzma_stream strm_ = LZMA_STREAM_INIT;
};

// A coded window before secondary compression and framing.
struct WindowOut {
  Bytes sections[3];  // data, instructions, addresses
  bool has_source = false;
  uint64_t seg_len = 0, seg_pos = 0;
  uint64_t target_len = 0;
  uint32_t adler = 0;
  Status status;
  VcdiffEncodeStats stats;
};

void CodeWindow(const std::vector<Op>& ops, ByteView win, const VcdiffEncodeOptions& options,
                WindowOut* out) {
  // The source segment: the span of old bytes the window copies.
  uint64_t lo = UINT64_MAX, hi = 0;
  for (const Op& op : ops) {
    if (op.type == kCopy && !op.target) {
      lo = std::min(lo, op.addr);
      hi = std::max(hi, op.addr + op.size);
    }
  }
  const bool has_source = hi > 0;
  const uint64_t seg = has_source ? hi - lo : 0;
  Bytes data, inst, addrs;
  InstWriter iw(&inst);
  AddressCache cache;
  uint64_t t = 0;  // Target bytes produced so far in this window.
  VcdiffEncodeStats& st = out->stats;
  for (const Op& op : ops) {
    if (op.type == kAdd) {
      data.insert(data.end(), win.begin() + op.addr, win.begin() + op.addr + op.size);
      iw.Add(kAdd, op.size, 0);
      ++st.adds;
      st.add_bytes += op.size;
    } else if (op.type == kRun) {
      data.push_back(static_cast<uint8_t>(op.addr));
      iw.Add(kRun, op.size, 0);
      ++st.runs;
    } else {
      const uint64_t addr = op.target ? seg + op.addr : op.addr - lo;
      const uint8_t mode = cache.Encode(addr, seg + t, &addrs);
      iw.Add(kCopy, op.size, mode);
      ++st.copies;
      st.copy_bytes += op.size;
      st.target_copies += op.target;
    }
    t += op.size;
  }
  iw.Flush();
  if (t != win.size()) {
    out->status = Error(ErrorCode::kInternal, "VCDIFF parse does not cover its window");
    return;
  }
  st.data_bytes += data.size();
  st.inst_bytes += inst.size();
  st.addr_bytes += addrs.size();

  out->has_source = has_source;
  out->seg_len = seg;
  out->seg_pos = has_source ? lo : 0;
  out->target_len = win.size();
  if (options.adler32) out->adler = Adler32(1, win);
  out->sections[0] = std::move(data);
  out->sections[1] = std::move(inst);
  out->sections[2] = std::move(addrs);
}

// Whether a section should go through the secondary stream. The stream cannot be rewound, so
// the decision comes first, from compressing the section on its own (the stream, which has seen
// the earlier sections, does at least about as well): it must save more than the flush costs.
bool WorthCompressing(ByteView section) {
  if (section.size() < 16) return false;
  lzma_options_lzma opt;
  if (lzma_lzma_preset(&opt, 1)) return true;
  opt.dict_size = LZMA_DICT_SIZE_MIN;
  const lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
  Bytes out(section.size() + section.size() / 16 + 64);
  size_t pos = 0;
  if (lzma_raw_buffer_encode(filters, nullptr, section.data(), section.size(), out.data(), &pos,
                             out.size()) != LZMA_OK) {
    return false;
  }
  constexpr size_t kFlushCost = 12;
  return pos + IntSize(section.size()) + kFlushCost < section.size();
}

// Frames a coded window, compressing its sections through |lzma| when given.
Status AppendWindow(WindowOut& w, const VcdiffEncodeOptions& options, SecondaryLzma* lzma,
                    Bytes* patch) {
  uint8_t delta_ind = 0;
  if (lzma != nullptr) {
    const uint8_t bits[3] = {kDeltaData, kDeltaInst, kDeltaAddr};
    for (int k = 0; k < 3; ++k) {
      if (!WorthCompressing(w.sections[k])) continue;
      Bytes packed;
      WriteInt(&packed, w.sections[k].size());
      DS_RETURN_IF_ERROR(lzma[k].Section(w.sections[k], &packed));
      w.sections[k] = std::move(packed);
      delta_ind |= bits[k];
    }
  }
  Bytes body;  // The delta encoding after its own length.
  WriteInt(&body, w.target_len);
  body.push_back(delta_ind);
  for (const Bytes& sec : w.sections) WriteInt(&body, sec.size());
  if (options.adler32) {
    for (int s = 24; s >= 0; s -= 8) body.push_back(static_cast<uint8_t>(w.adler >> s));
  }
  for (const Bytes& sec : w.sections) body.insert(body.end(), sec.begin(), sec.end());
  patch->push_back(
      static_cast<uint8_t>((w.has_source ? kWinSource : 0) | (options.adler32 ? kWinAdler32 : 0)));
  if (w.has_source) {
    WriteInt(patch, w.seg_len);
    WriteInt(patch, w.seg_pos);
  }
  WriteInt(patch, body.size());
  patch->insert(patch->end(), body.begin(), body.end());
  return Status::Ok();
}

}  // namespace

Result<Bytes> EncodeVcdiff(ByteView old, ByteView neu, const VcdiffEncodeOptions& options,
                           VcdiffEncodeStats* stats) {
  const auto t0 = Clock::now();
  VcdiffEncodeStats local;
  VcdiffEncodeStats& st = stats ? *stats : local;
  st = VcdiffEncodeStats();
  if (options.window_size == 0 || options.window_size > (16ull << 20)) {
    return Error(ErrorCode::kInvalidArgument, "VCDIFF window size must be 1 B to 16 MiB");
  }
  const auto t_sort = Clock::now();
  DS_ASSIGN_OR_RETURN(SuffixArray sa, SuffixArray::Build(old));
  st.suffix_sort_seconds = std::chrono::duration<double>(Clock::now() - t_sort).count();

  const uint64_t m = neu.size();
  // An empty target still gets one (empty) window, as xdelta3 writes and expects.
  const size_t windows = m == 0 ? 1 : static_cast<size_t>((m - 1) / options.window_size + 1);
  std::vector<WindowOut> outs(windows);
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t k; (k = next.fetch_add(1)) < windows;) {
      const uint64_t ws = k * options.window_size;
      const uint64_t we = std::min(m, ws + options.window_size);
      WindowParser parser(sa, neu, ws, we);
      const std::vector<Op> ops = parser.Parse();
      CodeWindow(ops, neu.subspan(ws, we - ws), options, &outs[k]);
    }
  };
  const int threads = std::max(
      1, std::min<int>(options.threads > 0 ? options.threads
                                           : static_cast<int>(std::thread::hardware_concurrency()),
                       static_cast<int>(windows)));
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();

  Bytes patch(kMagic.begin(), kMagic.end());
  if (options.secondary_lzma) {
    patch.push_back(kHdrSecondary);
    patch.push_back(kSecondaryLzma);
  } else {
    patch.push_back(0);
  }
  SecondaryLzma lzma[3];
  if (options.secondary_lzma) {
    for (int k = 0; k < 3; ++k) {
      uint64_t total = 0;
      for (const WindowOut& w : outs) total += w.sections[k].size();
      DS_RETURN_IF_ERROR(lzma[k].Init(total));
    }
  }
  for (WindowOut& w : outs) {
    DS_RETURN_IF_ERROR(w.status);
    DS_RETURN_IF_ERROR(AppendWindow(w, options, options.secondary_lzma ? lzma : nullptr, &patch));
    st.adds += w.stats.adds;
    st.add_bytes += w.stats.add_bytes;
    st.copies += w.stats.copies;
    st.copy_bytes += w.stats.copy_bytes;
    st.target_copies += w.stats.target_copies;
    st.runs += w.stats.runs;
    st.data_bytes += w.stats.data_bytes;
    st.inst_bytes += w.stats.inst_bytes;
    st.addr_bytes += w.stats.addr_bytes;
  }
  st.windows = windows;
  st.total_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return patch;
}

}  // namespace ds::delta
