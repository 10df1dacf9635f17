// VcdiffApplier: the push-based, bounded-memory RFC 3284 decoder, with xdelta3's extensions.
//
// States: file header -> (window header -> window body)*. The file header is buffered whole
// (bounded by kMaxAppHeader and kMaxCodeTableData); a window header is at most kMaxWindowHeader
// bytes; a window body (data, instruction and address sections) is buffered whole once its
// declared lengths passed ApplyLimits. Each window is decoded into one target buffer, checked
// against its Adler-32 when it carries one, and handed to the sink. COPY instructions read the
// source segment with positional reads through a small cache, never the whole segment; VCD_TARGET
// windows read earlier output back from the sink the same way.
#include <lzma.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "common/byte_reader.h"
#include "delta/vcdiff.h"
#include "delta/vcdiff_decode_internal.h"
#include "delta/vcdiff_format.h"

namespace ds::delta {

PatchFormat DetectPatchFormat(ByteView prefix) {
  if (prefix.size() >= kPatchMagic.size() &&
      std::equal(kPatchMagic.begin(), kPatchMagic.end(), prefix.begin())) {
    return PatchFormat::kDspf;
  }
  // The version byte is left to the decoder, which reports kPatchVersion for it.
  if (prefix.size() >= 3 &&
      std::equal(vcdiff::kMagic.begin(), vcdiff::kMagic.begin() + 3, prefix.begin())) {
    return PatchFormat::kVcdiff;
  }
  return PatchFormat::kUnknown;
}

const char* PatchFormatName(PatchFormat f) {
  switch (f) {
    case PatchFormat::kDspf:
      return "DSPF";
    case PatchFormat::kVcdiff:
      return "VCDIFF";
    case PatchFormat::kUnknown:
      break;
  }
  return "unknown";
}

namespace vcdiff {
namespace {

constexpr size_t kCodeTableStringSize = 6 * 256;
constexpr size_t kCacheBlock = 16 << 10;
constexpr size_t kCacheSlots = 256;
// Copies at least this long read straight into the output, bypassing the cache.
constexpr size_t kDirectReadSize = 32 << 10;

Status Malformed(std::string message) {
  return Error(ErrorCode::kPatchMalformed, std::move(message));
}

std::string Num(uint64_t v) { return std::to_string(v); }

std::string Hex(uint32_t v, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%0*X", digits, v);
  return buf;
}

enum class IntRead { kOk, kMore, kBad };

// Like ReadInt, but tells a prefix that may still become an integer from one that never will.
IntRead ReadIntPartial(ByteReader* r, uint64_t* v) {
  if (ReadInt(r, v)) return IntRead::kOk;
  const ByteView rest = r->Rest();
  const size_t n = std::min<size_t>(rest.size(), 10);
  for (size_t i = 0; i < n; ++i) {
    if (!(rest[i] & 0x80)) return IntRead::kBad;  // Complete, but above 2^64 - 1.
  }
  return rest.size() >= 10 ? IntRead::kBad : IntRead::kMore;
}

// For a failed ReadIntPartial: OK (= "need more bytes", nothing consumed) or kPatchMalformed.
Status IntFailure(IntRead rc, const char* what) {
  if (rc == IntRead::kMore) return Status::Ok();
  return Malformed(std::string(what) + " is not a valid VCDIFF integer");
}

// Reads [pos, pos + out.size()) of a source or target segment, relative to the segment start.
using SegmentRead = std::function<Status(uint64_t pos, std::span<uint8_t> out)>;

// The decoder of one section type's lzma secondary stream. xdelta3 (3.0.11) keeps one xz stream
// per section type (data, instructions, addresses) for the whole file: the first compressed
// section starts it, and each section ends with LZMA_SYNC_FLUSH, so a section decodes to exactly
// its declared size with the decoder state carried over from the previous one. The stream is
// never finished; if one does finish (LZMA_STREAM_END), the next section starts a new stream.
class SecondaryStream {
 public:
  SecondaryStream() = default;
  ~SecondaryStream() { lzma_end(&strm_); }
  SecondaryStream(const SecondaryStream&) = delete;
  SecondaryStream& operator=(const SecondaryStream&) = delete;

  // Decodes the next section's compressed bytes |src| into exactly |out|.
  Status Decode(ByteView src, std::span<uint8_t> out) {
    if (!active_) {
      lzma_end(&strm_);
      strm_ = LZMA_STREAM_INIT;
      if (lzma_stream_decoder(&strm_, kLzmaMemLimit, 0) != LZMA_OK) {
        return Error(ErrorCode::kResourceLimit, "cannot start the xz decoder");
      }
      active_ = true;
    }
    strm_.next_in = src.data();
    strm_.avail_in = src.size();
    strm_.next_out = out.data();
    strm_.avail_out = out.size();
    uint8_t extra = 0;
    bool spare = false;  // Decoding into |extra|: the declared size is already full.
    lzma_ret rc;
    for (;;) {
      rc = lzma_code(&strm_, LZMA_RUN);
      if (rc != LZMA_OK) break;
      if (strm_.avail_out == 0) {
        if (spare) break;
        strm_.next_out = &extra;
        strm_.avail_out = 1;
        spare = true;
      }
    }
    const uint64_t produced =
        spare ? out.size() + (1 - strm_.avail_out) : out.size() - strm_.avail_out;
    if (rc == LZMA_STREAM_END) active_ = false;
    if (rc == LZMA_MEMLIMIT_ERROR || rc == LZMA_MEM_ERROR) {
      return Error(ErrorCode::kResourceLimit,
                   "lzma stream needs more than " + Num(kLzmaMemLimit >> 20) + " MiB to decode");
    }
    if (produced > out.size()) {
      return Error(ErrorCode::kPatchDecompress,
                   "lzma stream decodes to more than the declared " + Num(out.size()) + " bytes");
    }
    // LZMA_BUF_ERROR (not fatal to the stream): the section's input holds no more output.
    if ((rc != LZMA_STREAM_END && rc != LZMA_BUF_ERROR) || produced != out.size()) {
      return Error(ErrorCode::kPatchDecompress,
                   "lzma stream is corrupt or truncated: " + Num(produced) + " of " +
                       Num(out.size()) + " bytes decoded (liblzma code " +
                       std::to_string(static_cast<int>(rc)) + ")");
    }
    return Status::Ok();
  }

 private:
  lzma_stream strm_ = LZMA_STREAM_INIT;
  bool active_ = false;
};

struct WindowContext {
  const CodeTable* table = nullptr;
  AddressCache* cache = nullptr;
  uint8_t hdr_indicator = 0;
  uint8_t secondary_id = 0;
  uint64_t max_section = 0;              // Cap on a decompressed instruction or address section.
  SecondaryStream* secondary = nullptr;  // Data, instruction and address streams.
};

// Returns a section's bytes, decompressing it (into |storage|) when Delta_Indicator says so.
Status SectionBytes(const WindowContext& ctx, const WindowHeader& w, int index, const char* name,
                    ByteView stored, uint64_t max_size, ErrorCode over_code, Bytes* storage,
                    ByteView* out) {
  if (!(w.delta_indicator & (1 << index))) {
    *out = stored;
    return Status::Ok();
  }
  if (!(ctx.hdr_indicator & kHdrSecondary)) {
    return Malformed(std::string(name) +
                     " section is marked compressed but the header names no secondary compressor");
  }
  if (ctx.secondary_id != kSecondaryLzma) {
    return Error(ErrorCode::kPatchUnknownMethod,
                 std::string("VCDIFF secondary compressor ") + SecondaryName(ctx.secondary_id) +
                     " is not supported; re-encode with xdelta3 -S none or -S lzma");
  }
  ByteReader r(stored);
  uint64_t size;
  if (!ReadInt(&r, &size)) {
    return Malformed(std::string("compressed ") + name + " section has no valid size");
  }
  if (size > max_size) {
    return Error(over_code, std::string("compressed ") + name + " section declares " + Num(size) +
                                " bytes, more than the " + Num(max_size) + " allowed");
  }
  storage->resize(size);
  DS_RETURN_IF_ERROR(
      ctx.secondary[index].Decode(r.Rest(), *storage).WithContext(std::string(name) + " section"));
  *out = *storage;
  return Status::Ok();
}

// Decodes one window whose sections are |body| into |*target| (resized to the target length).
// |read_segment| serves the source or target segment (unused without one). |scratch| holds
// decompressed sections.
Status DecodeWindow(const WindowContext& ctx, const WindowHeader& w, ByteView body,
                    const SegmentRead& read_segment, Bytes* target, Bytes scratch[3]) {
  if (body.size() != w.body_length()) return Error(ErrorCode::kInternal, "window body size");
  ByteView data, inst, addr;
  DS_RETURN_IF_ERROR(SectionBytes(ctx, w, 0, "data", body.first(w.data_length), w.target_length,
                                  ErrorCode::kPatchMalformed, &scratch[0], &data));
  DS_RETURN_IF_ERROR(SectionBytes(ctx, w, 1, "instruction",
                                  body.subspan(w.data_length, w.inst_length), ctx.max_section,
                                  ErrorCode::kResourceLimit, &scratch[1], &inst));
  DS_RETURN_IF_ERROR(SectionBytes(ctx, w, 2, "address",
                                  body.subspan(w.data_length + w.inst_length, w.addr_length),
                                  ctx.max_section, ErrorCode::kResourceLimit, &scratch[2], &addr));

  const uint64_t source_len = (w.win_indicator & (kWinSource | kWinTarget)) ? w.segment_length : 0;
  const uint64_t n = w.target_length;
  uint64_t u_size;
  if (!CheckedAddU64(source_len, n, &u_size)) return Malformed("segment and window too large");
  target->resize(n);
  uint8_t* out = target->data();
  ctx.cache->Reset();
  ByteReader dr(data), ir(inst), ar(addr);
  uint64_t here = 0;
  while (!ir.empty()) {
    uint8_t opcode;
    ir.ReadU8(&opcode);
    const CodeEntry& e = (*ctx.table)[opcode];
    for (int half = 0; half < 2; ++half) {
      const uint8_t type = half ? e.type2 : e.type1;
      if (type == kNoop) continue;
      uint64_t size = half ? e.size2 : e.size1;
      if (size == 0 && !ReadInt(&ir, &size)) {
        return Malformed("instruction section ends inside the size of instruction " + Num(opcode));
      }
      if (size > n - here) {
        return Malformed("instructions produce more than the target window's " + Num(n) + " bytes");
      }
      switch (type) {
        case kAdd: {
          ByteView bytes;
          if (!dr.ReadView(size, &bytes)) return Malformed("ADD reads past the data section");
          if (size) std::memcpy(out + here, bytes.data(), size);
          here += size;
          break;
        }
        case kRun: {
          uint8_t b;
          if (!dr.ReadU8(&b)) return Malformed("RUN reads past the data section");
          if (size) std::memset(out + here, b, size);
          here += size;
          break;
        }
        case kCopy: {
          const uint8_t mode = half ? e.mode2 : e.mode1;
          const uint64_t here_u = source_len + here;
          uint64_t a;
          if (mode >= ctx.cache->mode_count()) {
            return Malformed("COPY uses address mode " + Num(mode) + "; the code table has " +
                             Num(ctx.cache->mode_count()));
          }
          if (!ctx.cache->Decode(mode, here_u, &ar, &a)) {
            return Malformed("COPY address is missing from the address section or invalid");
          }
          if (a >= here_u) {
            return Malformed("COPY address " + Num(a) + " is not before the current position " +
                             Num(here_u));
          }
          uint64_t left = size;
          if (a < source_len) {
            const uint64_t k = std::min(left, source_len - a);
            if (k > 0) DS_RETURN_IF_ERROR(read_segment(a, std::span<uint8_t>(out + here, k)));
            here += k;
            left -= k;
            a += k;
          }
          // From the target window: |from| < here. When the copy overlaps the bytes it
          // produces, the output repeats with period here - from; copying from the fixed start
          // in chunks of everything produced so far gives the byte-by-byte result.
          const uint64_t from = a - source_len;
          while (left > 0) {
            const uint64_t k = std::min(left, here - from);
            std::memcpy(out + here, out + from, k);
            here += k;
            left -= k;
          }
          break;
        }
        default:
          return Malformed("code table entry " + Num(opcode) + " has instruction type " +
                           Num(type));
      }
    }
  }
  if (here != n) {
    return Malformed("instructions produce " + Num(here) + " bytes, the target window has " +
                     Num(n));
  }
  if (!dr.empty()) return Malformed(Num(dr.remaining()) + " unused bytes in the data section");
  if (!ar.empty()) return Malformed(Num(ar.remaining()) + " unused bytes in the address section");
  if (w.has_adler32) {
    const uint32_t got = Adler32(1, *target);
    if (got != w.adler32) {
      return Error(ErrorCode::kPatchOutputMismatch, "rebuilt window has Adler-32 " + Hex(got, 8) +
                                                        ", the patch says " + Hex(w.adler32, 8));
    }
  }
  return Status::Ok();
}

// Decodes an application-defined code table: VCDIFF windows (RFC 3284 section 7) that rebuild
// the table's 1536-byte string from the default table's string, using the default code table.
Status DecodeCodeTable(ByteView data, const FileHeader& outer, CodeTable* table) {
  // Some encoders embed a complete delta file; its header (no flags) is skipped. A Win_Indicator
  // can never be 0xD6, so this is unambiguous.
  if (data.size() >= 5 && std::equal(kMagic.begin(), kMagic.end(), data.begin())) {
    if (data[4] != 0) return Malformed("code table delta has header indicator bits");
    data = data.subspan(5);
  }
  const Bytes source = CodeTableToBytes(DefaultCodeTable());
  Bytes produced;
  produced.reserve(kCodeTableStringSize);
  AddressCache cache;
  WindowContext ctx;
  ctx.table = &DefaultCodeTable();
  ctx.cache = &cache;
  ctx.hdr_indicator = outer.indicator;
  ctx.secondary_id = outer.secondary_id;
  ctx.max_section = kMaxCodeTableData;
  SecondaryStream secondary[3];
  ctx.secondary = secondary;
  Bytes window_out, scratch[3];
  size_t pos = 0;
  while (pos < data.size()) {
    WindowHeader w;
    size_t consumed = 0;
    DS_RETURN_IF_ERROR(ParseWindowHeader(data.subspan(pos), nullptr, &w, &consumed));
    if (consumed == 0) return Malformed("code table delta ends inside a window header");
    pos += consumed;
    if (w.body_length() > data.size() - pos) {
      return Malformed("code table delta ends inside a window");
    }
    if (w.target_length > kCodeTableStringSize - produced.size()) {
      return Malformed("code table delta produces more than 1536 bytes");
    }
    const ByteView segment_base =
        (w.win_indicator & kWinSource) ? ByteView(source) : ByteView(produced);
    uint64_t end = 0;
    if ((w.win_indicator & (kWinSource | kWinTarget)) &&
        (!CheckedAddU64(w.segment_offset, w.segment_length, &end) || end > segment_base.size())) {
      return Malformed("code table delta copies from outside its source");
    }
    const uint64_t seg_offset = w.segment_offset;
    // |produced| does not change while a window decodes.
    SegmentRead read = [&segment_base, seg_offset](uint64_t p, std::span<uint8_t> out) {
      std::memcpy(out.data(), segment_base.data() + seg_offset + p, out.size());
      return Status::Ok();
    };
    DS_RETURN_IF_ERROR(
        DecodeWindow(ctx, w, data.subspan(pos, w.body_length()), read, &window_out, scratch));
    pos += w.body_length();
    produced.insert(produced.end(), window_out.begin(), window_out.end());
  }
  if (produced.size() != kCodeTableStringSize) {
    return Malformed("code table delta produces " + Num(produced.size()) +
                     " bytes instead of 1536");
  }
  CodeTableFromBytes(produced, table);
  for (size_t i = 0; i < table->size(); ++i) {
    if ((*table)[i].type1 > kCopy || (*table)[i].type2 > kCopy) {
      return Malformed("code table entry " + Num(i) + " has an unknown instruction type");
    }
  }
  return Status::Ok();
}

// Reads a byte range (the old file, or output already written) through a direct-mapped cache
// of kCacheSlots blocks of kCacheBlock bytes (4 MiB). A whole-source encoder's copies jump all
// over the source but walk each alignment forwards, so blocks are reused; a single window buffer
// would be refilled (and copied by the kernel) at nearly every jump.
class CachedReader {
 public:
  using Fetch = std::function<Status(uint64_t pos, std::span<uint8_t> out)>;
  explicit CachedReader(Fetch fetch) : fetch_(std::move(fetch)) {}

  // REQUIRES: pos + out.size() <= limit, the number of bytes the range holds. The cache assumes
  // the bytes below |limit| never change (true of the old file and of output already written).
  Status Read(uint64_t pos, std::span<uint8_t> out, uint64_t limit) {
    if (slots_.empty()) slots_.resize(kCacheSlots);
    while (!out.empty()) {
      const uint64_t block = pos / kCacheBlock;
      const size_t off = pos % kCacheBlock;
      Slot& slot = slots_[block % kCacheSlots];
      const uint64_t start = block * kCacheBlock;
      // A block cached short (it reached the limit then) is refetched once the limit has grown.
      if (slot.block != block || slot.bytes.size() <= off) {
        if (out.size() >= kDirectReadSize) return fetch_(pos, out);
        slot.block = UINT64_MAX;
        slot.bytes.resize(std::min<uint64_t>(kCacheBlock, limit - start));
        DS_RETURN_IF_ERROR(fetch_(start, slot.bytes));
        slot.block = block;
      }
      const size_t k = std::min(out.size(), slot.bytes.size() - off);
      std::memcpy(out.data(), slot.bytes.data() + off, k);
      out = out.subspan(k);
      pos += k;
    }
    return Status::Ok();
  }

 private:
  struct Slot {
    uint64_t block = UINT64_MAX;
    Bytes bytes;
  };
  Fetch fetch_;
  std::vector<Slot> slots_;
};

}  // namespace

Status ParseFileHeader(ByteView buf, FileHeader* header, size_t* consumed, size_t* need) {
  *consumed = 0;
  *need = buf.size() + 1;
  const size_t magic_len = std::min<size_t>(buf.size(), 3);
  if (!std::equal(buf.begin(), buf.begin() + magic_len, kMagic.begin())) {
    return Error(ErrorCode::kPatchBadMagic, "not a VCDIFF patch (bad magic)");
  }
  if (buf.size() >= 4 && buf[3] != 0) {
    return Error(ErrorCode::kPatchVersion,
                 "VCDIFF version " + Num(buf[3]) + " is not supported (only version 0)");
  }
  if (buf.size() < 5) return Status::Ok();
  ByteReader r(buf);
  r.Skip(4);
  FileHeader h;
  r.ReadU8(&h.indicator);
  if (h.indicator & ~(kHdrSecondary | kHdrCodeTable | kHdrAppHeader)) {
    return Malformed("unknown bits in the VCDIFF header indicator 0x" + Hex(h.indicator, 2));
  }
  if (h.indicator & kHdrSecondary) {
    if (!r.ReadU8(&h.secondary_id)) return Status::Ok();
    if (h.secondary_id != kSecondaryDjw && h.secondary_id != kSecondaryLzma &&
        h.secondary_id != kSecondaryFgk) {
      return Error(ErrorCode::kPatchUnknownMethod,
                   "unknown VCDIFF secondary compressor id " + Num(h.secondary_id));
    }
  }
  h.table = DefaultCodeTable();
  if (h.indicator & kHdrCodeTable) {
    uint64_t len;
    const IntRead rc = ReadIntPartial(&r, &len);
    if (rc != IntRead::kOk) return IntFailure(rc, "code table length");
    if (len < 2) return Malformed("code table data of " + Num(len) + " bytes");
    if (len > kMaxCodeTableData) {
      return Error(
          ErrorCode::kResourceLimit,
          "code table data of " + Num(len) + " bytes (at most " + Num(kMaxCodeTableData) + ")");
    }
    if (r.remaining() < len) {
      *need = r.position() + len;
      return Status::Ok();
    }
    uint8_t near_size = 0, same_size = 0;
    r.ReadU8(&near_size);
    r.ReadU8(&same_size);
    if (near_size + same_size > 254) {
      return Malformed("address cache sizes near " + Num(near_size) + " + same " + Num(same_size) +
                       " leave no byte for the modes");
    }
    ByteView delta;
    r.ReadView(len - 2, &delta);
    DS_RETURN_IF_ERROR(
        DecodeCodeTable(delta, h, &h.table).WithContext("application-defined code table"));
    h.custom_table = true;
    h.near_size = near_size;
    h.same_size = same_size;
  }
  if (h.indicator & kHdrAppHeader) {
    uint64_t len;
    const IntRead rc = ReadIntPartial(&r, &len);
    if (rc != IntRead::kOk) return IntFailure(rc, "application header length");
    if (len > kMaxAppHeader) {
      return Error(ErrorCode::kResourceLimit, "application header of " + Num(len) +
                                                  " bytes (at most " + Num(kMaxAppHeader) + ")");
    }
    if (r.remaining() < len) {
      *need = r.position() + len;
      return Status::Ok();
    }
    ByteView app;
    r.ReadView(len, &app);
    h.app_header.assign(app.begin(), app.end());
  }
  h.size = r.position();
  *consumed = h.size;
  *header = std::move(h);
  return Status::Ok();
}

Status ParseWindowHeader(ByteView buf, const ApplyLimits* limits, WindowHeader* window,
                         size_t* consumed) {
  *consumed = 0;
  ByteReader r(buf);
  WindowHeader w;
  if (!r.ReadU8(&w.win_indicator)) return Status::Ok();
  if (w.win_indicator & ~(kWinSource | kWinTarget | kWinAdler32)) {
    return Malformed("unknown bits in the window indicator 0x" + Hex(w.win_indicator, 2));
  }
  if ((w.win_indicator & kWinSource) && (w.win_indicator & kWinTarget)) {
    return Malformed("window indicator has both VCD_SOURCE and VCD_TARGET");
  }
  IntRead rc;
  if (w.win_indicator & (kWinSource | kWinTarget)) {
    if ((rc = ReadIntPartial(&r, &w.segment_length)) != IntRead::kOk) {
      return IntFailure(rc, "segment length");
    }
    if ((rc = ReadIntPartial(&r, &w.segment_offset)) != IntRead::kOk) {
      return IntFailure(rc, "segment position");
    }
    uint64_t end;
    if (!CheckedAddU64(w.segment_offset, w.segment_length, &end)) {
      return Malformed("segment position + length overflows");
    }
  }
  if ((rc = ReadIntPartial(&r, &w.delta_length)) != IntRead::kOk) {
    return IntFailure(rc, "delta encoding length");
  }
  if (limits != nullptr && w.delta_length > limits->max_segment_payload) {
    return Error(ErrorCode::kResourceLimit, "window delta encoding of " + Num(w.delta_length) +
                                                " bytes exceeds the limit of " +
                                                Num(limits->max_segment_payload));
  }
  const size_t delta_start = r.position();
  if ((rc = ReadIntPartial(&r, &w.target_length)) != IntRead::kOk) {
    return IntFailure(rc, "target window length");
  }
  if (limits != nullptr && w.target_length > limits->max_segment_output) {
    return Error(ErrorCode::kResourceLimit, "target window of " + Num(w.target_length) +
                                                " bytes exceeds the limit of " +
                                                Num(limits->max_segment_output));
  }
  if (!r.ReadU8(&w.delta_indicator)) return Status::Ok();
  if (w.delta_indicator & ~(kDeltaData | kDeltaInst | kDeltaAddr)) {
    return Malformed("unknown bits in the delta indicator 0x" + Hex(w.delta_indicator, 2));
  }
  if ((rc = ReadIntPartial(&r, &w.data_length)) != IntRead::kOk) {
    return IntFailure(rc, "data section length");
  }
  if ((rc = ReadIntPartial(&r, &w.inst_length)) != IntRead::kOk) {
    return IntFailure(rc, "instruction section length");
  }
  if ((rc = ReadIntPartial(&r, &w.addr_length)) != IntRead::kOk) {
    return IntFailure(rc, "address section length");
  }
  if (w.win_indicator & kWinAdler32) {
    uint8_t b[4];
    if (!r.ReadInto(b, 4)) return Status::Ok();
    w.has_adler32 = true;
    w.adler32 = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  }
  w.header_size = r.position();
  uint64_t parts = r.position() - delta_start;
  if (!CheckedAddU64(parts, w.data_length, &parts) ||
      !CheckedAddU64(parts, w.inst_length, &parts) ||
      !CheckedAddU64(parts, w.addr_length, &parts) || parts != w.delta_length) {
    return Malformed("delta encoding length " + Num(w.delta_length) +
                     " does not match its fields and sections");
  }
  *window = w;
  *consumed = w.header_size;
  return Status::Ok();
}

}  // namespace vcdiff

using vcdiff::WindowHeader;

class VcdiffApplier::Impl {
 public:
  Impl(const OldSource* old, OutputSink* out, ApplyLimits limits)
      : old_(old),
        out_(out),
        limits_(limits),
        old_reader_([this](uint64_t pos, std::span<uint8_t> o) { return old_->ReadAt(pos, o); }),
        target_reader_(
            [this](uint64_t pos, std::span<uint8_t> o) { return out_->ReadBack(pos, o); }) {}

  Status Write(ByteView data) {
    if (!failure_.ok()) return failure_;
    Status s = Consume(data);
    if (!s.ok()) failure_ = s;
    return s;
  }

  Status Finish() {
    if (!failure_.ok()) return failure_;
    if (state_ == State::kFinished) return Status::Ok();
    if (state_ == State::kWindowHeader && head_.empty()) {
      state_ = State::kFinished;
      return Status::Ok();
    }
    failure_ = Error(ErrorCode::kPatchTruncated,
                     state_ == State::kFileHeader
                         ? std::string("VCDIFF patch ended inside its header")
                         : "VCDIFF patch ended inside window " + std::to_string(windows_done_ + 1));
    return failure_;
  }

  uint64_t windows_done() const { return windows_done_; }
  uint64_t output_bytes() const { return output_bytes_; }

 private:
  enum class State { kFileHeader, kWindowHeader, kWindowBody, kFinished };

  std::string Where() const { return "window " + std::to_string(windows_done_ + 1); }

  Status Consume(ByteView data) {
    while (!data.empty()) {
      switch (state_) {
        case State::kFileHeader: {
          const size_t before = head_.size();
          const size_t take = std::min(data.size(), need_ - before);
          head_.insert(head_.end(), data.begin(), data.begin() + take);
          if (head_.size() < need_) return Status::Ok();
          size_t consumed = 0, need = 0;
          DS_RETURN_IF_ERROR(vcdiff::ParseFileHeader(head_, &header_, &consumed, &need));
          if (consumed == 0) {
            if (need <= head_.size()) return Error(ErrorCode::kInternal, "header parse stalled");
            need_ = need;
            data = data.subspan(take);
            break;
          }
          // With |before| bytes the header was incomplete, so consumed > before.
          data = data.subspan(consumed - before);
          head_.clear();
          cache_ = vcdiff::AddressCache(header_.near_size, header_.same_size);
          state_ = State::kWindowHeader;
          break;
        }
        case State::kWindowHeader: {
          const size_t before = head_.size();
          const size_t take = std::min(data.size(), vcdiff::kMaxWindowHeader - before);
          head_.insert(head_.end(), data.begin(), data.begin() + take);
          size_t consumed = 0;
          DS_RETURN_IF_ERROR(
              vcdiff::ParseWindowHeader(head_, &limits_, &window_, &consumed).WithContext(Where()));
          if (consumed == 0) {
            if (head_.size() >= vcdiff::kMaxWindowHeader) {
              return Error(ErrorCode::kInternal, "window header not parsed");
            }
            data = data.subspan(take);
            break;
          }
          data = data.subspan(consumed - before);
          head_.clear();
          DS_RETURN_IF_ERROR(StartWindow());
          break;
        }
        case State::kWindowBody: {
          const size_t take = std::min<uint64_t>(data.size(), window_.body_length() - body_.size());
          body_.insert(body_.end(), data.begin(), data.begin() + take);
          data = data.subspan(take);
          if (body_.size() == window_.body_length()) DS_RETURN_IF_ERROR(FinishWindow());
          break;
        }
        case State::kFinished:
          return Error(ErrorCode::kPatchTrailingData, "VCDIFF bytes after Finish()");
      }
    }
    return Status::Ok();
  }

  Status StartWindow() {
    const WindowHeader& w = window_;
    uint64_t end;
    if (w.win_indicator & vcdiff::kWinSource) {
      if (old_ == nullptr) {
        return Error(ErrorCode::kPatchWrongBase,
                     Where() + " copies from a source file, but none was given");
      }
      if (!CheckedAddU64(w.segment_offset, w.segment_length, &end) || end > old_->size()) {
        return Error(ErrorCode::kPatchWrongBase,
                     Where() + " reads source bytes [" + std::to_string(w.segment_offset) + ", +" +
                         std::to_string(w.segment_length) + ") beyond the " +
                         std::to_string(old_->size()) + "-byte old file");
      }
    } else if (w.win_indicator & vcdiff::kWinTarget) {
      if (!CheckedAddU64(w.segment_offset, w.segment_length, &end) || end > output_bytes_) {
        return Error(ErrorCode::kPatchMalformed,
                     Where() + " reads target bytes [" + std::to_string(w.segment_offset) + ", +" +
                         std::to_string(w.segment_length) + ") beyond the " +
                         std::to_string(output_bytes_) + " bytes produced so far");
      }
    }
    if (!CheckedAddU64(output_bytes_, w.target_length, &end)) {
      return Error(ErrorCode::kPatchMalformed, Where() + " makes the output too large");
    }
    body_.clear();
    body_.reserve(w.body_length());
    state_ = State::kWindowBody;
    if (w.body_length() == 0) return FinishWindow();
    return Status::Ok();
  }

  Status FinishWindow() {
    const WindowHeader& w = window_;
    vcdiff::WindowContext ctx;
    ctx.table = &header_.table;
    ctx.cache = &cache_;
    ctx.hdr_indicator = header_.indicator;
    ctx.secondary_id = header_.secondary_id;
    ctx.max_section = limits_.max_segment_payload;
    ctx.secondary = secondary_;
    const uint64_t base = w.segment_offset;
    vcdiff::SegmentRead read;
    if (w.win_indicator & vcdiff::kWinSource) {
      read = [this, base](uint64_t pos, std::span<uint8_t> o) {
        return old_reader_.Read(base + pos, o, old_->size());
      };
    } else if (w.win_indicator & vcdiff::kWinTarget) {
      read = [this, base](uint64_t pos, std::span<uint8_t> o) {
        return target_reader_.Read(base + pos, o, output_bytes_);
      };
    }
    DS_RETURN_IF_ERROR(
        vcdiff::DecodeWindow(ctx, w, body_, read, &output_, scratch_).WithContext(Where()));
    DS_RETURN_IF_ERROR(out_->Write(output_));
    output_bytes_ += w.target_length;
    ++windows_done_;
    body_.clear();
    state_ = State::kWindowHeader;
    return Status::Ok();
  }

  const OldSource* old_;
  OutputSink* out_;
  ApplyLimits limits_;
  vcdiff::CachedReader old_reader_;
  vcdiff::CachedReader target_reader_;

  State state_ = State::kFileHeader;
  Status failure_;
  size_t need_ = 1;  // Header bytes worth parsing again at.
  vcdiff::FileHeader header_;
  vcdiff::AddressCache cache_;
  WindowHeader window_;
  Bytes head_, body_, output_;
  Bytes scratch_[3];
  vcdiff::SecondaryStream secondary_[3];
  uint64_t windows_done_ = 0;
  uint64_t output_bytes_ = 0;
};

VcdiffApplier::VcdiffApplier(const OldSource* old, OutputSink* out, ApplyLimits limits)
    : impl_(std::make_unique<Impl>(old, out, limits)) {}
VcdiffApplier::~VcdiffApplier() = default;
Status VcdiffApplier::Write(ByteView data) { return impl_->Write(data); }
Status VcdiffApplier::Finish() { return impl_->Finish(); }
uint64_t VcdiffApplier::windows_done() const { return impl_->windows_done(); }
uint64_t VcdiffApplier::output_bytes() const { return impl_->output_bytes(); }

Result<Bytes> ApplyVcdiff(ByteView old, ByteView patch, const ApplyLimits& limits) {
  MemoryOldSource src(old);
  VectorSink sink;
  VcdiffApplier applier(&src, &sink, limits);
  DS_RETURN_IF_ERROR(applier.Write(patch));
  DS_RETURN_IF_ERROR(applier.Finish());
  return std::move(sink.bytes);
}

}  // namespace ds::delta
