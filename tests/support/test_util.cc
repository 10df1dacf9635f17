// Shared helpers for the deltastream tests: data generators, temp dirs, patch surgery.
#include "support/test_util.h"

#define ZSTD_STATIC_LINKING_ONLY
#include <gtest/gtest.h>
#include <stdlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/byte_reader.h"
#include "common/byte_writer.h"
#include "common/fs.h"
#include "common/hash.h"

#ifndef DS_TEST_TMP_ROOT
#error "DS_TEST_TMP_ROOT must name a directory in the build tree"
#endif

namespace ds::testing {

Bytes RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes out(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(rng());
  return out;
}

Bytes TextBytes(size_t n, uint64_t seed) {
  static constexpr const char* kWords[] = {"delta",   "stream", "patch",  "segment",  "copy",
                                           "literal", "window", "update", "agent",    "server",
                                           "block",   "the",    "of",     "and",      "a",
                                           "to",      "in",     "is",     "checksum", "zstd"};
  std::mt19937_64 rng(seed);
  Bytes out;
  out.reserve(n + 16);
  size_t line = 0;
  while (out.size() < n) {
    const std::string prefix = std::to_string(line++) + ": ";
    out.insert(out.end(), prefix.begin(), prefix.end());
    const int words = 3 + static_cast<int>(rng() % 9);
    for (int w = 0; w < words; ++w) {
      const std::string_view word = kWords[rng() % std::size(kWords)];
      out.insert(out.end(), word.begin(), word.end());
      out.push_back(w + 1 == words ? '\n' : ' ');
    }
  }
  out.resize(n);
  return out;
}

std::string TempRoot() {
  std::error_code ec;
  std::filesystem::create_directories(DS_TEST_TMP_ROOT, ec);
  return DS_TEST_TMP_ROOT;
}

TempDir::TempDir() {
  std::string tmpl = TempRoot() + "/ds_test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << tmpl << ": " << std::strerror(errno);
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<std::string> TempDir::List() const {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(path_)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

void WriteFileOrDie(const std::string& path, ByteView data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  f.close();
  ASSERT_TRUE(f.good()) << "writing " << path;
}

Bytes ReadFileOrDie(const std::string& path) {
  Result<Bytes> r = ReadFile(path);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : Bytes();
}

RawPatch SplitPatch(ByteView patch) {
  RawPatch out;
  size_t consumed = 0;
  Status s = delta::ParseFileHeader(patch, &out.header, &consumed);
  if (!s.ok() || consumed == 0) {
    ADD_FAILURE() << "SplitPatch: bad file header: " << s.ToString();
    return RawPatch();
  }
  out.header_bytes = consumed;
  size_t pos = consumed;
  for (uint64_t i = 0; i < out.header.segment_count; ++i) {
    RawSegment seg;
    seg.offset = pos;
    uint32_t crc_state, stored_crc;
    s = delta::ParseSegmentHeader(patch.subspan(pos), &seg.header, &consumed, &crc_state,
                                  &stored_crc);
    if (!s.ok() || consumed == 0 || seg.header.payload_length > patch.size() - pos - consumed) {
      ADD_FAILURE() << "SplitPatch: bad segment " << i << ": " << s.ToString();
      return RawPatch();
    }
    seg.header_bytes = consumed;
    pos += consumed;
    seg.payload.assign(patch.begin() + pos, patch.begin() + pos + seg.header.payload_length);
    pos += seg.header.payload_length;
    out.segments.push_back(std::move(seg));
  }
  EXPECT_EQ(pos, patch.size()) << "SplitPatch: trailing bytes";
  return out;
}

Bytes JoinPatch(const RawPatch& patch) {
  Bytes out;
  delta::WriteFileHeader(patch.header, &out);
  for (const RawSegment& seg : patch.segments) delta::WriteSegment(seg.header, seg.payload, &out);
  return out;
}

delta::FileHeader HeaderFor(ByteView old, ByteView neu, uint64_t max_output) {
  delta::FileHeader h;
  h.old_size = old.size();
  h.old_sha256 = Sha256::Of(old);
  h.new_size = neu.size();
  h.new_sha256 = Sha256::Of(neu);
  h.max_segment_output = std::min<uint64_t>(max_output, neu.size());
  h.segment_count = neu.empty() ? 0 : (neu.size() - 1) / h.max_segment_output + 1;
  h.max_segment_payload = h.max_segment_output;
  h.max_ref_window = 0;
  return h;
}

RawSegment StoredSegment(ByteView neu, uint64_t offset, uint64_t length) {
  RawSegment seg;
  seg.header.new_offset = offset;
  seg.header.new_length = length;
  seg.header.method = delta::Method::kStored;
  seg.payload.assign(neu.begin() + offset, neu.begin() + offset + length);
  seg.header.payload_length = length;
  seg.header.output_crc32c = Crc32c(neu.subspan(offset, length));
  return seg;
}

RawPatch StoredPatch(ByteView old, ByteView neu, uint64_t segment_size) {
  RawPatch p;
  p.header = HeaderFor(old, neu, segment_size);
  for (uint64_t off = 0; off < neu.size(); off += segment_size) {
    p.segments.push_back(
        StoredSegment(neu, off, std::min<uint64_t>(segment_size, neu.size() - off)));
  }
  return p;
}

Bytes EncodeControl(const std::vector<ControlEntry>& entries) {
  Bytes out;
  ByteWriter w(&out);
  for (const ControlEntry& e : entries) {
    // Relative to the end of the last copy (base 0); entries without a copy carry 0.
    w.WriteVarint(e.copy_len ? delta::EncodeCopyWhere(e.old_delta, false) : 0);
    w.WriteVarint(e.copy_len);
    w.WriteVarint(e.lit_len);
  }
  return out;
}

Bytes StoredCopyDiffPayload(ByteView control, ByteView diff, ByteView literals) {
  delta::CopyDiffLayout layout;
  const ByteView streams[3] = {control, diff, literals};
  for (int i = 0; i < 3; ++i) {
    layout.codec[i] = delta::StreamCodec::kStored;
    layout.raw_len[i] = streams[i].size();
    layout.encoded[i] = streams[i];
  }
  Bytes out;
  delta::WriteCopyDiffPayload(layout, &out);
  return out;
}

MethodCounts CountMethods(ByteView patch) {
  MethodCounts counts;
  Result<delta::PatchInfo> info = delta::InspectPatch(patch);
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  if (!info.ok()) return counts;
  for (const delta::SegmentInfo& s : info->segments) {
    switch (s.header.method) {
      case delta::Method::kStored:
        ++counts.stored;
        break;
      case delta::Method::kCopyDiff:
        ++counts.copydiff;
        break;
      case delta::Method::kZstdRef:
      case delta::Method::kLzmaRef:
        ++counts.ref;
        break;
      default:
        ++counts.other;
        break;
    }
  }
  return counts;
}

Bytes ZstdMagiclessFrame(ByteView data, ByteView prefix, int level) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_format, ZSTD_f_zstd1_magicless);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0);
  if (!prefix.empty()) ZSTD_CCtx_refPrefix(cctx, prefix.data(), prefix.size());
  Bytes out(ZSTD_compressBound(data.size()));
  const size_t n = ZSTD_compress2(cctx, out.data(), out.size(), data.data(), data.size());
  ZSTD_freeCCtx(cctx);
  if (ZSTD_isError(n)) {
    ADD_FAILURE() << "zstd: " << ZSTD_getErrorName(n);
    return Bytes();
  }
  out.resize(n);
  return out;
}

Result<Bytes> ApplyInChunks(ByteView old, ByteView patch, const std::vector<size_t>& chunks,
                            const delta::ApplyLimits& limits) {
  delta::MemoryOldSource src(old);
  delta::VectorSink sink;
  delta::PatchApplier applier(&src, &sink, limits);
  size_t pos = 0, i = 0;
  while (pos < patch.size()) {
    const size_t n = std::min(chunks[i++ % chunks.size()], patch.size() - pos);
    DS_RETURN_IF_ERROR(applier.Write(patch.subspan(pos, n)));
    pos += n;
  }
  DS_RETURN_IF_ERROR(applier.Finish());
  return std::move(sink.bytes);
}

}  // namespace ds::testing
