#include "delta/xz_streams.h"

#include <lzma.h>

#include <algorithm>
#include <cstring>

#include "common/byte_reader.h"
#include "delta/lzma_replay.h"

namespace ds::delta {
namespace {

constexpr uint8_t kXzMagic[6] = {0xFD, '7', 'z', 'X', 'Z', 0x00};

bool IsXz(ByteView b) { return b.size() >= 12 && std::memcmp(b.data(), kXzMagic, 6) == 0; }

// An .xz "multibyte integer" (LEB128, at most 9 bytes).
bool ReadXzVli(ByteReader* r, uint64_t* v) {
  *v = 0;
  for (int i = 0; i < 9; ++i) {
    uint8_t b;
    if (!r->ReadU8(&b)) return false;
    *v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
    if (!(b & 0x80)) return true;
  }
  return false;
}

struct Candidate {
  std::string name;
  uint64_t offset = 0, max_length = 0;
};

// ar archive members ("!<arch>\n", 60-byte headers, data padded to even offsets).
std::vector<Candidate> ArCandidates(ByteView file) {
  std::vector<Candidate> out;
  uint64_t pos = 8;
  while (pos + 60 <= file.size()) {
    const uint8_t* h = file.data() + pos;
    if (h[58] != '`' || h[59] != '\n') break;
    uint64_t size = 0;
    int digits = 0;
    for (int i = 48; i < 58 && h[i] != ' '; ++i) {
      if (h[i] < '0' || h[i] > '9') return out;
      size = size * 10 + (h[i] - '0');
      ++digits;
    }
    if (digits == 0) break;
    const uint64_t data = pos + 60;
    if (size > file.size() - data) break;
    std::string name(reinterpret_cast<const char*>(h), 16);
    name.erase(name.find_last_not_of(' ') + 1);
    if (!name.empty() && name.back() == '/') name.pop_back();
    if (IsXz(file.subspan(data, size))) out.push_back({"ar:" + name, data, size});
    pos = data + size + (size & 1);
  }
  return out;
}

}  // namespace

Result<XzParams> FindXzParams(ByteView stream, ByteView content) {
  const Status unsupported = Error(ErrorCode::kUnsupported, "no liblzma preset reproduces it");
  if (!IsXz(stream) || stream[6] != 0) return unsupported;
  XzParams base;
  base.check = stream[7] & 0x0F;
  // The first block header: one LZMA2 filter, its dictionary, and whether sizes are recorded
  // (the multi-threaded encoder records both).
  ByteReader r(stream.subspan(12));
  uint8_t size_code, flags;
  if (!r.ReadU8(&size_code) || size_code == 0 || !r.ReadU8(&flags)) return unsupported;
  if ((flags & 0x03) != 0 || (flags & 0x3C) != 0) return unsupported;  // One filter only.
  uint64_t csize = 0, usize = 0, filter, props_size;
  const bool sizes = (flags & 0xC0) == 0xC0;
  if ((flags & 0x40) && !ReadXzVli(&r, &csize)) return unsupported;
  if ((flags & 0x80) && !ReadXzVli(&r, &usize)) return unsupported;
  uint8_t dict_byte;
  if (!ReadXzVli(&r, &filter) || filter != LZMA_FILTER_LZMA2 || !ReadXzVli(&r, &props_size) ||
      props_size != 1 || !r.ReadU8(&dict_byte) || dict_byte > 40) {
    return unsupported;
  }
  const uint64_t dict =
      dict_byte == 40 ? 0xFFFFFFFFull : (uint64_t{2} | (dict_byte & 1)) << (dict_byte / 2 + 11);
  // Block sizes to try with the multi-threaded encoder: a first block shorter than the content
  // is the block size; otherwise liblzma's default (3 x dictionary, at least 1 MiB: xz -T,
  // dpkg-deb), then the content's size.
  std::vector<uint64_t> block_sizes = {0};
  if (sizes) {
    if (usize > 0 && usize < content.size()) {
      block_sizes = {usize};
    } else {
      block_sizes = {std::max<uint64_t>(3 * dict, 1 << 20), std::max<uint64_t>(1, content.size())};
    }
  }
  // Presets with that dictionary, the default level first.
  std::vector<int> levels;
  for (int level : {6, 9, 8, 7, 5, 4, 3, 2, 1, 0}) {
    lzma_options_lzma opt{};
    if (!lzma_lzma_preset(&opt, level) && opt.dict_size == dict) levels.push_back(level);
  }
  for (int level : levels) {
    for (uint8_t extreme : {uint8_t{0}, uint8_t{0x80}}) {
      for (uint64_t bs : block_sizes) {
        XzParams p = base;
        p.preset = static_cast<uint8_t>(level | extreme);
        p.block_size = bs;
        if (XzEncode(content, p, stream).ok()) return p;
      }
    }
  }
  return unsupported;
}

std::vector<XzStream> FindXzStreams(ByteView file, bool prove, const XzStreamLimits& limits) {
  std::vector<Candidate> cands;
  if (IsXz(file)) {
    cands.push_back({"xz", 0, file.size()});
  } else if (file.size() >= 8 && std::memcmp(file.data(), "!<arch>\n", 8) == 0) {
    cands = ArCandidates(file);
  }
  if (cands.size() > limits.max_streams) cands.resize(limits.max_streams);
  std::vector<XzStream> out;
  for (const Candidate& c : cands) {
    const ByteView candidate = file.subspan(c.offset, c.max_length);
    Result<ReplayForm> f = XzToReplayForm(candidate, limits.max_content);
    if (!f.ok() || f->stream_size < limits.min_length || f->form.size() > limits.max_content) {
      continue;
    }
    const ByteView stream = candidate.first(f->stream_size);
    XzStream s{c.name, c.offset, f->stream_size, std::move(f->form), std::move(f->content),
               false,  {}};
    if (prove) {
      if (limits.max_encoder_memory > 0) {
        Result<XzParams> p = FindXzParams(stream, s.content);
        if (p.ok() && XzEncoderMemory(*p, s.content.size()) <= limits.max_encoder_memory) {
          s.reencode = true;
          s.params = *p;
        }
      }
      if (!s.reencode && !XzFromReplayForm(s.form, stream).ok()) continue;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace ds::delta
